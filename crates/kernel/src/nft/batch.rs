//! nfnetlink batches: the messages of one transaction framed by BATCH_BEGIN and BATCH_END with
//! consecutive sequence numbers and a description each, sent in one `sendmsg`, and the acks read
//! back and mapped to the message that failed.

use super::consts::*;
use super::error::{Error, netlink};
use crate::nl::{
    self, KernelError, Messages, MsgBuf, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, Socket,
};

/// First sequence number of a batch. Every socket is new, so any number works; replies are
/// matched to messages by it.
pub(crate) const FIRST_SEQ: u32 = 1;

/// Receive buffer for the acks of a batch: one small skb per message; the kernel accounts each at
/// well under this many bytes. Acks that do not fit are dropped, so be generous.
const RECV_BYTES_PER_ACK: usize = 2048;
/// Headroom on top of the batch size for the send buffer (the kernel subtracts a little).
pub(crate) const SEND_BUF_SLACK: usize = 64 * 1024;

/// An encoded batch with what is needed to interpret the kernel's replies.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of BATCH_BEGIN; message `i` of the batch has `first_seq + i`.
    pub first_seq: u32,
    /// Description of each message, indexed by `seq - first_seq`.
    pub what: Vec<String>,
    /// Messages that carry `NLM_F_ACK` (all but BEGIN and END).
    pub acked: usize,
    /// Set elements as the model counts them (ranges or values).
    pub elements: usize,
}

impl Batch {
    /// The description of the message with sequence number `seq`.
    pub fn describe(&self, seq: u32) -> String {
        seq.checked_sub(self.first_seq)
            .and_then(|i| self.what.get(i as usize))
            .cloned()
            .unwrap_or_else(|| format!("message with unknown sequence number {seq}"))
    }
}

/// Builds the messages of a batch with consecutive sequence numbers and remembers what each one is
/// (what [`Batch`] needs to name the message an error belongs to).
pub(crate) struct Encoder {
    b: MsgBuf,
    next_seq: u32,
    what: Vec<String>,
    acked: usize,
}

impl Encoder {
    pub(crate) fn new(capacity: usize) -> Encoder {
        Encoder {
            b: MsgBuf::with_capacity(capacity),
            next_seq: FIRST_SEQ,
            what: Vec::new(),
            acked: 0,
        }
    }

    /// One message: nlmsghdr + nfgenmsg(family, res_id) + attributes written by `body`.
    fn msg(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        what: String,
        body: impl FnOnce(&mut MsgBuf),
    ) -> Result<(), Error> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if flags & NLM_F_ACK != 0 {
            self.acked += 1;
        }
        let m = self.b.begin(ty, flags, seq);
        let [r0, r1] = res_id.to_be_bytes();
        self.b.put_header(&[family, NFNETLINK_V0, r0, r1]);
        body(&mut self.b);
        self.b
            .end(m)
            .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        self.what.push(what);
        Ok(())
    }

    /// An nf_tables message of family inet with `NLM_F_REQUEST | NLM_F_ACK | flags`.
    pub(crate) fn nft(
        &mut self,
        msg: u16,
        flags: u16,
        what: String,
        body: impl FnOnce(&mut MsgBuf),
    ) -> Result<(), Error> {
        let what = format!("{} for {what}", nft_msg_name(msg));
        self.msg(
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            0,
            what,
            body,
        )
    }

    pub(crate) fn begin_batch(&mut self) -> Result<(), Error> {
        self.msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            "the batch".into(),
            |_| {},
        )
    }

    pub(crate) fn end_batch(&mut self) -> Result<(), Error> {
        self.msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            "BATCH_END".into(),
            |_| {},
        )
    }

    pub(crate) fn finish(self, elements: usize) -> Batch {
        Batch {
            bytes: self.b.into_bytes(),
            first_seq: FIRST_SEQ,
            what: self.what,
            acked: self.acked,
            elements,
        }
    }
}

/// A netfilter netlink socket in the calling thread's network namespace, with extended acks.
pub(crate) fn open_socket() -> Result<Socket, Error> {
    let s = Socket::open(nl::NETLINK_NETFILTER)
        .map_err(netlink("opening a netfilter netlink socket"))?;
    // Extended acks give the kernel's reason; capped acks keep error replies small.
    s.enable_ext_ack()
        .map_err(netlink("enabling extended netlink acks"))?;
    Ok(s)
}

impl Batch {
    /// Sends the batch in one `sendmsg` and reads every reply. The kernel processes the whole
    /// batch inside the send and queues one ack per `NLM_F_ACK` message (and the errors, all
    /// after the batch was committed or aborted), so everything is there to read without
    /// blocking.
    pub(crate) fn send(&self, sock: &mut Socket) -> Result<(), Error> {
        sock.set_send_buffer(self.bytes.len() + SEND_BUF_SLACK)
            .map_err(netlink("sizing the netlink send buffer"))?;
        let recv = (self.what.len() * RECV_BYTES_PER_ACK).max(1 << 20);
        sock.set_recv_buffer(recv)
            .map_err(netlink("sizing the netlink receive buffer"))?;
        sock.send(&self.bytes)
            .map_err(netlink("sending the nftables batch"))?;
        let mut replies = Vec::new();
        sock.drain_queued(&mut replies)
            .map_err(netlink("reading the replies to the nftables batch"))?;
        let (acked, first_error) =
            scan_acks(&replies, "parsing the replies to the nftables batch", Some)?;
        if let Some((_, error)) = first_error {
            return Err(Error::Rejected {
                what: self.describe(error.request.seq),
                error,
            });
        }
        if acked != self.acked {
            return Err(Error::MissingAcks {
                acked,
                expected: self.acked,
            });
        }
        Ok(())
    }
}

/// Reads the acks of a batch: how many messages the kernel acked, and the error that caused the
/// others. `key` maps an acked request's sequence number to its place in the batch (`None`:
/// not this batch's, skip); later errors are often consequences of the first (a rule in a
/// chain that failed), so the error with the lowest place is the cause.
pub(crate) fn scan_acks(
    replies: &[u8],
    context: &'static str,
    key: impl Fn(u32) -> Option<u32>,
) -> Result<(usize, Option<(u32, KernelError)>), Error> {
    let mut acked = 0;
    let mut first_error: Option<(u32, KernelError)> = None;
    for m in Messages::new(replies) {
        let m = m.map_err(netlink(context))?;
        if m.header.ty != NLMSG_ERROR {
            continue;
        }
        let e = nl::parse_error(&m).map_err(netlink(context))?;
        let Some(k) = key(e.request.seq) else {
            continue;
        };
        if e.errno == 0 {
            acked += 1;
        } else if first_error.as_ref().is_none_or(|(f, _)| k < *f) {
            first_error = Some((k, e));
        }
    }
    Ok((acked, first_error))
}
