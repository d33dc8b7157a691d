//! JSON on standard output, the way every command prints it with `--json`.

pub fn print_json(v: &impl serde::Serialize) {
    // Serialising our own values cannot fail; a broken stdout pipe ends the process like any CLI.
    println!("{}", serde_json::to_string_pretty(v).expect("JSON serialisation"));
}
