//! The Redis-level fence against a real `redis-server`: a pause blocks writes but not reads, and unpause
//! lifts it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use havip_agent::fence::RedisFence;
use havip_agent::sentinel::conn::ConnectOptions;
use redis::AsyncConnectionConfig;

/// A `redis-server` on 127.0.0.1 and a free port, killed on drop.
struct Redis {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install redis-server");
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start listening on {addr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Redis {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn conn(&self, timeout: Duration) -> redis::aio::MultiplexedConnection {
        let cfg = AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
        redis::Client::open(format!("redis://{}", self.addr))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn opts(timeout: Duration) -> ConnectOptions {
    ConnectOptions {
        username: None,
        password: None,
        tls: None,
        timeout,
    }
}

#[tokio::test]
async fn pause_blocks_writes_but_not_reads_and_unpause_lifts_it() {
    let redis = Redis::start();
    let fence = RedisFence::new(
        opts(Duration::from_secs(2)),
        redis.addr.clone(),
        Duration::from_secs(30),
    );
    let mut c = redis.conn(Duration::from_millis(300)).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("before")
        .query_async(&mut c)
        .await
        .unwrap();

    fence.pause_writes().await.unwrap();

    let write: Result<(), _> = redis::cmd("SET")
        .arg("k")
        .arg("during")
        .query_async(&mut c)
        .await;
    assert!(write.is_err(), "a write was acknowledged during the pause");
    let mut reader = redis.conn(Duration::from_secs(2)).await;
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut reader)
        .await
        .unwrap();
    assert_eq!(v, "before", "reads go on during the pause");

    fence.unpause().await.unwrap();
    let mut writer = redis.conn(Duration::from_secs(2)).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("after")
        .query_async(&mut writer)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut writer)
        .await
        .unwrap();
    assert_eq!(v, "after");
}

#[tokio::test]
async fn unreachable_redis_gives_an_error_naming_it() {
    let fence = RedisFence::new(
        opts(Duration::from_millis(200)),
        "127.0.0.1:1",
        Duration::from_secs(1),
    );
    let e = fence.pause_writes().await.unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:1") && e.contains("connect"), "{e}");
}
