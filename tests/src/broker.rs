//! A Tansu broker (a Kafka-protocol broker with in-memory storage) on a free loopback port,
//! stopped by PID when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`, for `--bootstrap-servers`.
    pub address: String,
    pub log_path: PathBuf,
}

/// Returns a port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("bind 127.0.0.1:0").port()
}

fn tansu_binary() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".to_owned())
}

impl Broker {
    /// Starts Tansu and waits until it accepts connections. Panics with the fix when the binary
    /// is missing.
    pub fn start() -> Broker {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let log_path = std::env::temp_dir().join(format!("atkafka-tansu-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("create the broker log");
        let url = format!("tcp://{address}");
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start the Tansu broker `{}`: {error}; install it with `make test-deps`", tansu_binary())
            });
        let broker = Broker { child, address, log_path };
        broker.wait_until_ready(Duration::from_secs(30));
        broker
    }

    fn wait_until_ready(&self, timeout: Duration) {
        let address: SocketAddr = self.address.parse().expect("a socket address");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the broker did not listen on {} within {timeout:?}; log: {}", self.address, self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Creates a topic through the admin API (Tansu does not create topics on first produce).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .expect("create an admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
            .await
            .expect("create_topics request");
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("creating topic {name} failed: {code}"));
        }
    }

    /// Deletes `topic` and its messages, so that a long benchmark does not fill the broker's
    /// memory.
    pub async fn delete_topic(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .expect("create an admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin.delete_topics(&[topic], &options).await.expect("delete_topics request");
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("deleting topic {name} failed: {code}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}
