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
        Redis::start_with(&[])
    }

    /// A `redis-server` with extra command-line settings (e.g. `--requirepass`).
    fn start_with(extra: &[&str]) -> Redis {
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
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install redis-server");
        let addr = format!("127.0.0.1:{port}");
        // Wait for a PONG, not just a connect: a connect to a port nobody listens on yet can succeed by TCP
        // self-connection (source port = destination port), which then keeps redis from binding it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut child = child;
        while !pong(&addr) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "redis-server exited before answering on {addr}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer PING on {addr}"
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

/// Whether a Redis at `addr` answers `PING` with `+PONG` (or `-NOAUTH`: it is up, and wants a password).
fn pong(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    c.write_all(b"PING\r\n").is_ok()
        && c.read_exact(&mut buf).is_ok()
        && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
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

mod requirepass {
    //! `ROLE` (confirm_role, corroboration) against a Redis with `requirepass`: the `[redis]` password is
    //! sent. Regression: `confirm_role` dropped it and always failed with NOAUTH.

    use std::net::IpAddr;
    use std::path::Path;

    use havip_agent::config::Config;
    use havip_agent::sentinel::conn::{ConnectOptions, confirm_role};

    use super::Redis;

    const PASSWORD: &str = "s3cret-role-check-pass";

    fn config(redis_table: &str) -> Config {
        let text = format!(
            r#"
[cloud]
region = "ap-guangzhou"
[node]
instance_id = "ins-a"
address = "198.18.0.11"
interface = "eth0"
[sentinel]
addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
confirm_role = true
{redis_table}
[[havip]]
master = "m"
havip_id = "havip-role0001"
vip = "198.18.0.100/24"
"#
        );
        Config::parse_str(&text, Path::new("test.toml")).unwrap()
    }

    fn ip_port(addr: &str) -> (IpAddr, u16) {
        let a: std::net::SocketAddr = addr.parse().unwrap();
        (a.ip(), a.port())
    }

    #[tokio::test]
    async fn confirm_role_logs_in_with_the_redis_password() {
        let redis = Redis::start_with(&["--requirepass", PASSWORD]);
        let (ip, port) = ip_port(&redis.addr);
        let cfg = config(&format!(
            "[redis]\naddress = \"{}\"\npassword = \"{PASSWORD}\"\npause_writes = false",
            redis.addr
        ));

        let master = confirm_role(ip, port, &ConnectOptions::role_check(&cfg))
            .await
            .expect("ROLE with the [redis] password");

        assert!(master, "a lone redis-server is a master");
    }

    #[tokio::test]
    async fn without_a_redis_table_the_noauth_error_says_where_the_password_goes() {
        let redis = Redis::start_with(&["--requirepass", PASSWORD]);
        let (ip, port) = ip_port(&redis.addr);
        let cfg = config("");

        let err = confirm_role(ip, port, &ConnectOptions::role_check(&cfg))
            .await
            .expect_err("no password: NOAUTH")
            .to_string();

        assert!(
            err.contains("NOAUTH")
                && err.contains("[redis]")
                && err.contains("pause_writes = false"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn without_the_password_the_error_says_authentication_and_never_shows_a_secret() {
        let redis = Redis::start_with(&["--requirepass", PASSWORD]);
        let (ip, port) = ip_port(&redis.addr);
        let cfg = config(&format!(
            "[redis]\naddress = \"{}\"\npassword = \"wrong-password-xyz\"",
            redis.addr
        ));

        let err = confirm_role(ip, port, &ConnectOptions::role_check(&cfg))
            .await
            .expect_err("a wrong password must fail")
            .to_string();

        assert!(err.contains(&redis.addr), "{err}");
        assert!(
            !err.contains("wrong-password-xyz") && !err.contains(PASSWORD),
            "{err}"
        );
    }
}

mod pause_ownership {
    //! One pause rule for the daemon and `migrate-havip`: each sees the other's pause (the ledger in
    //! `claim.lock_dir`) and lifts it when the majority names this node, never when it names another.

    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use havip_agent::act::{Executor, FenceSetup};
    use havip_agent::claim::Claimer;
    use havip_agent::config::{Config, FenceAfter};
    use havip_agent::reconcile::{
        Action, CloudHolder, FORGET_AFTER, HavipMachine, MasterConfig, Policy,
    };
    use havip_agent::sentinel::{Corroboration, MasterView, Newest};
    use havip_testkit::recording::RecordingNet;
    use tokio::time::Instant;

    use super::Redis;

    const ME: &str = "198.18.0.11";
    const OTHER: &str = "198.18.0.12";

    fn config(redis: &str, lock_dir: &std::path::Path) -> Config {
        let text = format!(
            r#"
[cloud]
region = "ap-guangzhou"
[node]
instance_id = "ins-a"
address = "{ME}"
interface = "eth0"
[sentinel]
addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
[redis]
address = "{redis}"
[[havip]]
master = "m"
havip_id = "havip-pause001"
vip = "198.18.0.100/24"
[claim]
lock_dir = "{}"
"#,
            lock_dir.display()
        );
        Config::parse_str(&text, std::path::Path::new("pause.toml")).unwrap()
    }

    fn executor(cfg: &Config, pause: Duration) -> Executor {
        let claimer = Claimer::new(
            None,
            Arc::new(RecordingNet::new("eth0")),
            "ins-a",
            cfg.node.instance_type,
            cfg.announce.clone(),
            cfg.cloud.timeout.get(),
        );
        Executor::new(
            claimer,
            FenceSetup::from_config(cfg, ME.parse().unwrap(), pause),
        )
    }

    /// The majority in sight, naming `ip`.
    fn names(ip: &str) -> MasterView {
        let c = MasterConfig {
            ip: ip.parse::<IpAddr>().unwrap(),
            port: 6379,
            epoch: 3,
        };
        MasterView {
            total: 3,
            members: 3,
            majority: true,
            newest: Some(Newest {
                ip: c.ip,
                port: c.port,
                epoch: c.epoch,
                reported_by: vec![],
                first_seen: None,
                corroboration: Some(Corroboration::Peers),
            }),
            pending: None,
            agreed: Some(c),
            outsiders: vec![],
            cut_off_for: None,
            down_after: None,
        }
    }

    fn daemon_machine(pause: Duration) -> HavipMachine {
        HavipMachine::new(Policy {
            me: ME.parse().unwrap(),
            master: "m".into(),
            fence_after: FenceAfter::Auto,
            forget_after: FORGET_AFTER,
            redis_fence: true,
            pause,
        })
    }

    async fn can_write(redis: &Redis) -> bool {
        let mut c = redis.conn(Duration::from_millis(300)).await;
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async::<()>(&mut c)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_pause_the_script_set_is_lifted_by_the_daemon_only_when_the_majority_names_this_node()
    {
        let redis = Redis::start();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&redis.addr, dir.path());
        let havip = cfg.havips[0].clone();
        let script = executor(&cfg, Duration::from_secs(30));
        let daemon = executor(&cfg, Duration::from_secs(2));

        // The script fenced this node: 30 s pause, recorded in the lock dir.
        script.pause(None).await.unwrap();
        assert!(
            !can_write(&redis).await,
            "the script's pause is not in force"
        );

        // The daemon sees it, and while the majority names another node it leaves it to expire.
        let local = daemon.local(&havip, None).await.unwrap();
        let left = local
            .pause_left
            .expect("the daemon sees the script's pause");
        assert!(left > Duration::from_secs(25), "{left:?}");
        let mut m = daemon_machine(Duration::from_secs(2));
        m.observe(&names(OTHER), local, CloudHolder::Unknown, Instant::now());
        assert!(
            !m.plan(SystemTime::now())
                .actions
                .iter()
                .any(|a| a == Action::Unpause),
            "a node the majority replaced must not lift the pause"
        );

        // The majority names this node: the daemon lifts the script's pause.
        let mut m = daemon_machine(Duration::from_secs(2));
        m.observe(&names(ME), local, CloudHolder::Unknown, Instant::now());
        let plan = m.plan(SystemTime::now()).actions.to_vec();
        assert!(plan.contains(&Action::Unpause), "{plan:?}");
        daemon.unpause(None).await.unwrap();
        assert!(can_write(&redis).await, "the pause is still in force");
        assert_eq!(daemon.local(&havip, None).await.unwrap().pause_left, None);

        // And the other way round: the daemon's pause is seen by the script.
        daemon.pause(None).await.unwrap();
        let seen = script.local(&havip, None).await.unwrap().pause_left;
        assert!(
            seen.is_some_and(|d| d <= Duration::from_secs(2)),
            "{seen:?}"
        );
        script.unpause(None).await.unwrap();
        assert!(can_write(&redis).await);
    }
}
