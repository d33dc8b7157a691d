//! The HTTP endpoints leash serves: Prometheus metrics of the firewall (`leash metrics`) and of
//! the DNS forwarder (`leash dns --metrics`), over `observe::metrics`' exposition.

use observe::metrics::{self, Format, Input};
use std::net::TcpListener;

/// Serves `exporter`'s exposition on `listener` until the process ends.
pub fn metrics_forever(listener: &TcpListener, exporter: &dyn metrics::Exporter) -> std::io::Result<()> {
    metrics::serve(listener, exporter, &metrics::forever())
}

/// Serves the DNS forwarder's counters (`leash dns --metrics ADDR`) on a thread of its own, for
/// the life of the process. Only the forwarder's counters: the table's are `leash metrics`'s.
pub fn dns_metrics(listener: TcpListener, handle: dns::Handle) -> std::io::Result<()> {
    eprintln!("leash dns: serving metrics on http://{}/metrics", listener.local_addr()?);
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let exporter = move |format: Format| -> Result<String, String> {
            let fields = handle.stats().fields();
            Ok(metrics::render(&Input { dns: Some(&fields), ..Input::default() }, format))
        };
        if let Err(e) = metrics_forever(&listener, &exporter) {
            eprintln!("leash dns: warning: the metrics server stopped: {e}");
        }
    })?;
    Ok(())
}
