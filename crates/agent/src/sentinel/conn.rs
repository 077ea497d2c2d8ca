//! Connections to Sentinel (and, for `ROLE`, to Redis): ACL login, TLS, and a hard timeout on everything.
//!
//! Owns how a connection is made and how one request is bounded in time. Every connect and every command
//! is wrapped in `timeout`: a peer that stops answering (a frozen process, a link dropping packets without
//! RST) is noticed within that time instead of TCP's minutes. It does not keep connections alive or decide
//! reachability (see [`super::watcher`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo,
    RedisConnectionInfo, TlsCertificates, Value,
};

use super::parse::{self, ReplyError};
use super::{MasterInfo, SentinelError};
use crate::config::{RedisConfig, SentinelConfig, TlsConfig, parse_host_port};
use crate::secret::Secret;

/// How to reach a Sentinel or a Redis: credentials, TLS and the timeout of one request.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// ACL username (`AUTH <username> <password>`).
    pub username: Option<String>,
    /// Password (ACL or `requirepass`).
    pub password: Option<Secret>,
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<TlsConfig>,
    /// Timeout of connecting and of each command.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// The options `[sentinel]` configures.
    pub fn sentinel(cfg: &SentinelConfig) -> Self {
        Self {
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            tls: cfg.tls.clone(),
            timeout: cfg.timeout.get(),
        }
    }
}

impl ConnectOptions {
    /// The options for the local Redis from `[redis]`: its credentials, TLS (with the `[sentinel.tls]`
    /// files) when `redis.tls` is set, and the Sentinel timeout. Certificate checks are skipped only by
    /// `redis.tls_insecure`: `sentinel.tls.insecure` is for the Sentinels alone.
    pub fn redis(redis: &RedisConfig, sentinel: &SentinelConfig) -> Self {
        Self {
            username: redis.username.clone(),
            password: redis.password.clone(),
            tls: match &sentinel.tls {
                Some(t) if redis.tls => Some(TlsConfig {
                    insecure: redis.tls_insecure,
                    ..t.clone()
                }),
                _ => None,
            },
            timeout: sentinel.timeout.get(),
        }
    }
}

impl ConnectOptions {
    /// How to reach a Redis of the deployment for `ROLE` (corroboration, `confirm_role`): the `[redis]`
    /// credentials when configured (a deployment's Redis usually share `requirepass`), otherwise the
    /// Sentinel's TLS files without credentials, always verifying (`sentinel.tls.insecure` is for the
    /// Sentinels alone).
    pub fn role_check(cfg: &crate::config::Config) -> Self {
        match &cfg.redis {
            Some(r) => Self::redis(r, &cfg.sentinel),
            None => Self {
                username: None,
                password: None,
                tls: cfg.sentinel.tls.clone().map(|t| TlsConfig {
                    insecure: false,
                    ..t
                }),
                ..Self::sentinel(&cfg.sentinel)
            },
        }
    }
}

fn read_tls_file(peer: &str, path: &std::path::Path) -> Result<Vec<u8>, SentinelError> {
    std::fs::read(path).map_err(|e| SentinelError::TlsFile {
        peer: peer.to_owned(),
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Builds a client for `addr` (`host:port`). Files named in the TLS config are read here, at every
/// connect, so rotated certificates are picked up. `peer` names the target in errors.
pub fn client(peer: &str, addr: &str, opts: &ConnectOptions) -> Result<Client, SentinelError> {
    let (host, port) = parse_host_port(addr).map_err(|problem| SentinelError::BadAddress {
        peer: peer.to_owned(),
        problem,
    })?;
    // CLIENT SETINFO is skipped: Redis 7.0 does not know it, and a restricted ACL user may not run it.
    let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(user) = &opts.username {
        settings = settings.set_username(user);
    }
    if let Some(pass) = &opts.password {
        settings = settings.set_password(pass.expose());
    }
    let conn_addr = match &opts.tls {
        None => ConnectionAddr::Tcp(host, port),
        Some(tls) => {
            crate::tls::install_provider();
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: tls.insecure,
                tls_params: None,
            }
        }
    };
    let build_err = |e: redis::RedisError| SentinelError::Connect {
        peer: peer.to_owned(),
        detail: e.to_string(),
    };
    let info = conn_addr
        .into_connection_info()
        .map_err(build_err)?
        .set_redis_settings(settings);
    let Some(tls) = &opts.tls else {
        return Client::open(info).map_err(build_err);
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_tls_file(peer, cert)?,
            client_key: read_tls_file(peer, key)?,
        }),
        (None, None) => None,
        (Some(cert), None) | (None, Some(cert)) => {
            return Err(SentinelError::TlsFile {
                peer: peer.to_owned(),
                path: cert.clone(),
                detail: "cert_file and key_file must be given together".into(),
            });
        }
    };
    let root_cert = tls
        .ca_file
        .as_deref()
        .map(|p| read_tls_file(peer, p))
        .transpose()?;
    if client_tls.is_none() && root_cert.is_none() {
        return Client::open(info).map_err(build_err);
    }
    Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(build_err)
}

/// Whether the connection's driver bounds each response by itself (`set_response_timeout`), or every caller
/// does (one timer per request instead of two: the watcher's heartbeats are its steadiest idle work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseBound {
    Driver,
    Caller,
}

async fn connect_peer(
    peer: &str,
    addr: &str,
    opts: &ConnectOptions,
    bound: ResponseBound,
) -> Result<MultiplexedConnection, SentinelError> {
    let client = client(peer, addr, opts)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(opts.timeout))
        .set_response_timeout(match bound {
            ResponseBound::Driver => Some(opts.timeout),
            ResponseBound::Caller => None,
        });
    match tokio::time::timeout(
        opts.timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Err(_) => Err(SentinelError::Timeout {
            peer: peer.to_owned(),
            what: "connect",
            after: opts.timeout,
        }),
        Ok(Err(e)) => Err(SentinelError::Connect {
            peer: peer.to_owned(),
            detail: e.to_string(),
        }),
        Ok(Ok(conn)) => Ok(conn),
    }
}

/// `sentinel <addr>`, the peer name used in errors and logs.
pub(crate) fn sentinel_peer(addr: &str) -> String {
    format!("sentinel {addr}")
}

/// Opens a command connection to the Sentinel at `addr`, logged in as `opts` says, within `opts.timeout`.
pub async fn connect(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<MultiplexedConnection, SentinelError> {
    connect_peer(&sentinel_peer(addr), addr, opts, ResponseBound::Driver).await
}

/// [`connect`] for a caller that bounds every request itself ([`command`], [`ping_conn`],
/// [`query_masters`]): the connection's driver sets no timer of its own per request.
pub(crate) async fn connect_caller_bounded(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<MultiplexedConnection, SentinelError> {
    connect_peer(&sentinel_peer(addr), addr, opts, ResponseBound::Caller).await
}

/// Opens a command connection to the Redis at `addr` (errors name it `redis <addr>`), e.g. for
/// `CLIENT PAUSE` when fencing. Every command on it must still be bounded by the caller.
pub async fn connect_redis(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<MultiplexedConnection, SentinelError> {
    connect_peer(&format!("redis {addr}"), addr, opts, ResponseBound::Driver).await
}

/// Opens a Pub/Sub connection to the Sentinel at `addr` and subscribes to `channels`, all within
/// `opts.timeout`.
pub(crate) async fn subscribe(
    addr: &str,
    opts: &ConnectOptions,
    channels: &[&str],
) -> Result<PubSub, SentinelError> {
    let peer = sentinel_peer(addr);
    let client = client(&peer, addr, opts)?;
    let work = async {
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| SentinelError::Connect {
                peer: peer.clone(),
                detail: e.to_string(),
            })?;
        pubsub
            .subscribe(channels)
            .await
            .map_err(|e| SentinelError::Link {
                peer: peer.clone(),
                what: "subscribe",
                detail: e.to_string(),
            })?;
        Ok(pubsub)
    };
    match tokio::time::timeout(opts.timeout, work).await {
        Err(_) => Err(SentinelError::Timeout {
            peer,
            what: "subscribe",
            after: opts.timeout,
        }),
        Ok(r) => r,
    }
}

/// Sends one command and waits at most `timeout`. An error reply becomes [`SentinelError::Reply`]; a broken
/// connection [`SentinelError::Link`].
pub(crate) async fn command(
    conn: &mut MultiplexedConnection,
    peer: &str,
    what: &'static str,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<Value, SentinelError> {
    use redis::aio::ConnectionLike;
    match tokio::time::timeout(timeout, conn.req_packed_command(cmd)).await {
        Err(_) => Err(SentinelError::Timeout {
            peer: peer.to_owned(),
            what,
            after: timeout,
        }),
        Ok(Err(e)) if e.is_timeout() => Err(SentinelError::Timeout {
            peer: peer.to_owned(),
            what,
            after: timeout,
        }),
        Ok(Err(e))
            if matches!(
                e.kind(),
                redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
            ) =>
        {
            Err(SentinelError::Reply {
                peer: peer.to_owned(),
                source: ReplyError::Server {
                    command: what,
                    message: match (e.code(), e.detail()) {
                        (Some(code), Some(detail)) => format!("{code} {detail}"),
                        _ => e.to_string(),
                    },
                },
            })
        }
        Ok(Err(e)) => Err(SentinelError::Link {
            peer: peer.to_owned(),
            what,
            detail: e.to_string(),
        }),
        Ok(Ok(Value::ServerError(e))) => Err(SentinelError::Reply {
            peer: peer.to_owned(),
            source: ReplyError::Server {
                command: what,
                message: parse::server_error_text(&e),
            },
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// `PING` on an open connection, bounded by `timeout`. Any failure, including an error reply, means the
/// link is not usable.
pub(crate) async fn ping_conn(
    conn: &mut MultiplexedConnection,
    peer: &str,
    timeout: Duration,
) -> Result<(), SentinelError> {
    match command(conn, peer, "ping", &redis::cmd("PING"), timeout).await {
        Ok(_) => Ok(()),
        Err(SentinelError::Reply { peer, source }) => Err(SentinelError::Link {
            peer,
            what: "ping",
            detail: source.to_string(),
        }),
        Err(e) => Err(e),
    }
}

/// One Sentinel's answer to [`query_masters`].
#[derive(Debug, Clone)]
pub struct SentinelAnswer {
    /// Its run id (`SENTINEL MYID`), when it gave a usable one.
    pub myid: Option<String>,
    /// Per asked master, in the order asked: its view, or what was wrong with that part of the answer.
    pub masters: Vec<Result<MasterInfo, ReplyError>>,
}

/// Asks `SENTINEL MYID` once, then `SENTINEL MASTER`, `SENTINEL GET-MASTER-ADDR-BY-NAME` and
/// `SENTINEL SENTINELS` for every name, in one pipeline within `timeout`. The outer error is the link's (the
/// whole answer is missing); the inner results are per master (one master's bad answer does not spoil the
/// others). A failed `SENTINEL SENTINELS` or `MYID` only leaves `peers`/`myid` unknown.
pub async fn query_masters(
    conn: &mut MultiplexedConnection,
    addr: &str,
    names: &[String],
    timeout: Duration,
) -> Result<SentinelAnswer, SentinelError> {
    use redis::aio::ConnectionLike;
    let peer = sentinel_peer(addr);
    if names.is_empty() {
        return Ok(SentinelAnswer {
            myid: None,
            masters: Vec::new(),
        });
    }
    let mut pipe = redis::pipe();
    pipe.cmd("SENTINEL").arg("MYID");
    for name in names {
        pipe.cmd("SENTINEL").arg("MASTER").arg(name);
        pipe.cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(name);
        pipe.cmd("SENTINEL").arg("SENTINELS").arg(name);
    }
    let expected = 1 + names.len() * 3;
    let link = |detail: String| SentinelError::Link {
        peer: peer.clone(),
        what: "query",
        detail,
    };
    let timed_out = || SentinelError::Timeout {
        peer: peer.clone(),
        what: "query",
        after: timeout,
    };
    let values =
        match tokio::time::timeout(timeout, conn.req_packed_commands(&pipe, 0, expected)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if e.is_timeout() => return Err(timed_out()),
            Ok(Err(e)) => return Err(link(e.to_string())),
            Ok(Ok(values)) => values,
        };
    if values.len() != expected {
        return Err(link(format!(
            "pipeline gave {} replies, expected {expected}",
            values.len()
        )));
    }
    let myid = parse::parse_myid_reply(&values[0]).ok();
    let masters = names
        .iter()
        .zip(values[1..].chunks_exact(3))
        .map(|(name, r)| {
            let mut info = parse::master_info(name, &r[0], &r[1])?;
            info.peers = parse::parse_sentinels_reply(&r[2]).ok();
            Ok(info)
        })
        .collect();
    Ok(SentinelAnswer { myid, masters })
}

/// Asks one master of the Sentinel on `conn` (see [`query_masters`]).
pub async fn query_master(
    conn: &mut MultiplexedConnection,
    addr: &str,
    name: &str,
    timeout: Duration,
) -> Result<MasterInfo, SentinelError> {
    let mut answer = query_masters(conn, addr, &[name.to_owned()], timeout).await?;
    match answer.masters.pop() {
        Some(Ok(info)) => Ok(info),
        Some(Err(source)) => Err(SentinelError::Reply {
            peer: sentinel_peer(addr),
            source,
        }),
        None => Err(SentinelError::Link {
            peer: sentinel_peer(addr),
            what: "query",
            detail: "no reply".into(),
        }),
    }
}

/// One-shot: connects to the Sentinel at `addr` and asks it about `master` (for `havip-agent check` and
/// `status`).
pub async fn query(
    addr: &str,
    cfg: &SentinelConfig,
    master: &str,
) -> Result<MasterInfo, SentinelError> {
    let opts = ConnectOptions::sentinel(cfg);
    let mut conn = connect(addr, &opts).await?;
    query_master(&mut conn, addr, master, opts.timeout).await
}

/// One-shot: connects to the Sentinel at `addr` and measures one `PING` round trip (connecting is not
/// counted).
pub async fn ping(addr: &str, cfg: &SentinelConfig) -> Result<Duration, SentinelError> {
    let opts = ConnectOptions::sentinel(cfg);
    let mut conn = connect(addr, &opts).await?;
    let start = Instant::now();
    ping_conn(&mut conn, &sentinel_peer(addr), opts.timeout).await?;
    Ok(start.elapsed())
}

/// One-shot: asks the Redis at `ip:port` `ROLE` and says whether it answers `master`. An old master can
/// briefly still say `master`, so this only confirms; it never overrides a newer Sentinel configuration.
pub async fn confirm_role(
    ip: IpAddr,
    port: u16,
    opts: &ConnectOptions,
) -> Result<bool, SentinelError> {
    let addr = std::net::SocketAddr::new(ip, port).to_string();
    let peer = format!("redis {addr}");
    let mut conn = connect_peer(&peer, &addr, opts, ResponseBound::Driver).await?;
    let reply = command(
        &mut conn,
        &peer,
        parse::CMD_ROLE,
        &redis::cmd("ROLE"),
        opts.timeout,
    )
    .await
    .map_err(|e| match e {
        // Asked without a password (no `[redis]` password): say where the password goes.
        SentinelError::Reply {
            peer,
            source: ReplyError::Server { command, message },
        } if opts.password.is_none() && message.starts_with("NOAUTH") => SentinelError::Reply {
            peer,
            source: ReplyError::Server {
                command,
                message: format!(
                    "{message} (this redis has requirepass: set password in [redis], with \
                     pause_writes = false to use it only for ROLE)"
                ),
            },
        },
        other => other,
    })?;
    let role =
        parse::parse_role_reply(&reply).map_err(|source| SentinelError::Reply { peer, source })?;
    Ok(role == "master")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_options_never_show_the_password() {
        let opts = ConnectOptions {
            username: Some("havip".into()),
            password: Some(Secret::new("hunter2-xyz")),
            tls: None,
            timeout: Duration::from_millis(250),
        };
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hunter2-xyz"), "{shown}");
        assert!(shown.contains("havip"));
    }

    /// Regression: `[sentinel.tls] insecure` silently turned off certificate checks for `[redis]` too.
    #[test]
    fn sentinel_insecure_never_reaches_redis_which_has_its_own_setting() {
        let cfg = |redis: &str| {
            crate::config::Config::parse_str(
                &format!(
                    "[cloud]\nregion = \"ap-guangzhou\"\n[node]\ninstance_id = \"ins-a\"\n\
                     address = \"198.18.0.11\"\ninterface = \"eth0\"\n[sentinel]\n\
                     addresses = [\"198.18.0.1:26379\"]\n[sentinel.tls]\nca_file = \"/ca.pem\"\n\
                     insecure = true\n{redis}\n[[havip]]\nmaster = \"m\"\nhavip_id = \"havip-1\"\n\
                     vip = \"198.18.0.100/24\"\n"
                ),
                std::path::Path::new("t.toml"),
            )
            .unwrap()
        };
        let insecure = |o: &ConnectOptions| o.tls.as_ref().map(|t| t.insecure);

        let c = cfg("[redis]\ntls = true");
        assert_eq!(insecure(&ConnectOptions::sentinel(&c.sentinel)), Some(true));
        let r = ConnectOptions::redis(c.redis.as_ref().unwrap(), &c.sentinel);
        assert_eq!(insecure(&r), Some(false), "redis verifies by default");
        assert_eq!(
            r.tls.unwrap().ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem")),
            "the CA file is shared"
        );
        assert_eq!(insecure(&ConnectOptions::role_check(&c)), Some(false));
        assert_eq!(insecure(&ConnectOptions::role_check(&cfg(""))), Some(false));

        let c = cfg("[redis]\ntls = true\ntls_insecure = true");
        let r = ConnectOptions::redis(c.redis.as_ref().unwrap(), &c.sentinel);
        assert_eq!(insecure(&r), Some(true), "only by its own setting");
    }

    #[test]
    fn bad_addresses_and_half_tls_configs_are_rejected_by_name() {
        let opts = |tls| ConnectOptions {
            username: None,
            password: None,
            tls,
            timeout: Duration::from_millis(250),
        };
        let err = client("sentinel x", "no-port", &opts(None))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sentinel x: bad address"), "{err}");
        let half = TlsConfig {
            ca_file: None,
            cert_file: Some("/etc/client.pem".into()),
            key_file: None,
            insecure: false,
        };
        let err = client("sentinel x", "127.0.0.1:26379", &opts(Some(half)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/client.pem") && err.contains("together"),
            "{err}"
        );
    }
}
