//! `plugin-activate`: connects to a plugin socket and sends `Plugin.Activate` as dockerd does;
//! prints the answer, or the error (exit status 1). For tests that run it as another user.
//!
//! ```text
//! plugin-activate SOCKET
//! ```

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(socket) = std::env::args().nth(1) else {
        eprintln!("usage: plugin-activate SOCKET");
        return ExitCode::from(2);
    };
    match integration::activate(Path::new(&socket)) {
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plugin-activate: connect {socket}: {e}");
            ExitCode::FAILURE
        }
    }
}
