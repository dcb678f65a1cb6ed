//! `test-http`: a tiny HTTP program for node-agent tests, run as a "container".
//!
//! Listens on `$POD_IP:$PORT` (defaults 127.0.0.1:8080) and serves:
//! - `GET /healthz`: 200, or 503 when `FAIL_READINESS=1`;
//! - `GET /`: `pod=<POD_NAME> ip=<POD_IP>`;
//! - `GET /env/<NAME>`: the variable's value (404 if unset);
//! - `GET /file/<path>`: the file's contents (path taken as absolute);
//! - `GET /exit`: exits with status 4 after replying.
//!
//! With `EXIT_AFTER_MS=<n>` it exits with status 3 after n milliseconds.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn reply(mut s: &TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let _ = write!(
        s,
        "HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}

fn handle(s: TcpStream) {
    let mut line = String::new();
    let mut reader = BufReader::new(&s);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers.
    let mut h = String::new();
    while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    match path.as_str() {
        "/healthz" if var("FAIL_READINESS") == "1" => reply(&s, 503, "not ready\n"),
        "/healthz" => reply(&s, 200, "ok\n"),
        "/" => reply(
            &s,
            200,
            &format!("pod={} ip={}\n", var("POD_NAME"), var("POD_IP")),
        ),
        "/exit" => {
            reply(&s, 200, "bye\n");
            std::process::exit(4);
        }
        p if p.starts_with("/env/") => match std::env::var(&p[5..]) {
            Ok(v) => reply(&s, 200, &v),
            Err(_) => reply(&s, 404, "unset\n"),
        },
        p if p.starts_with("/file/") => match std::fs::read_to_string(&p[5..]) {
            Ok(v) => reply(&s, 200, &v),
            Err(e) => reply(&s, 404, &format!("{e}\n")),
        },
        _ => reply(&s, 404, "not found\n"),
    }
}

fn main() {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    if let Some(ms) = std::env::var("EXIT_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("test-http: exiting after {ms} ms as told");
            std::process::exit(3);
        });
    }
    let listener = match TcpListener::bind(format!("{ip}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("test-http: cannot listen on {ip}:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("test-http: listening on {ip}:{port}");
    for s in listener.incoming().flatten() {
        std::thread::spawn(move || handle(s));
    }
}
