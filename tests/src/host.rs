//! The atkafka-host binary as a child process, stopped by PID when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The host binary: `$ATKAFKA_HOST_BIN`, or the release build, or the debug build.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ATKAFKA_HOST_BIN") {
        return PathBuf::from(path);
    }
    let target = crate::workspace_dir().join("target");
    for profile in ["release", "debug"] {
        let path = target.join(profile).join("atkafka-host");
        if path.exists() {
            return path;
        }
    }
    panic!("atkafka-host is not built: run `make build` (or set ATKAFKA_HOST_BIN)");
}

pub struct HostProcess {
    child: Child,
    log_path: PathBuf,
}

impl HostProcess {
    /// Starts the host with `args`; its log goes to a temporary file.
    pub fn start(args: &[String]) -> HostProcess {
        let log_path = std::env::temp_dir().join(format!("atkafka-host-{}-{}.log", std::process::id(), unique()));
        let log = std::fs::File::create(&log_path).expect("create the host log");
        let child = Command::new(binary())
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start atkafka-host");
        HostProcess { child, log_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends `signal` (for example `libc::SIGTERM`) to the host.
    pub fn signal(&self, signal: i32) {
        // SAFETY: `kill` has no memory-safety preconditions; the PID is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to `timeout` for the host to exit; `None` if it is still running.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for_child(&mut self.child, timeout)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_for_exit(timeout) {
            Some(status) => status,
            None => panic!("the host did not exit within {timeout:?} of SIGTERM; log:\n{}", self.log()),
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_for_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Returns a number unique within this test process, for naming temporary files.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Fetches `http://address/path` with a plain HTTP/1.1 request and returns the body.
pub fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// Reads the value of one sample, such as `atkafka_produced_events{status="ok"}`, from a
/// Prometheus text exposition.
pub fn metric_value(exposition: &str, sample: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
