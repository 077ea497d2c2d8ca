//! Pure parsers for Sentinel replies and Pub/Sub events. No I/O, never panics on any input.
//!
//! Owns the shape checks: a reply of the wrong type, a missing field, a non-numeric epoch or an address that
//! is not an IP gives a typed error that names the command, the field and the bad value (truncated), so the
//! caller can log it and ignore that answer. It does not decide what an answer means for the failover
//! (see [`super::snapshot`]).

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use redis::Value;

use super::{Event, MasterInfo};

/// `SENTINEL MASTER <name>`, for error messages.
pub const CMD_MASTER: &str = "SENTINEL MASTER";
/// `SENTINEL GET-MASTER-ADDR-BY-NAME <name>`, for error messages.
pub const CMD_ADDR: &str = "SENTINEL GET-MASTER-ADDR-BY-NAME";
/// `ROLE`, for error messages.
pub const CMD_ROLE: &str = "ROLE";
/// `SENTINEL SENTINELS <name>`, for error messages.
pub const CMD_SENTINELS: &str = "SENTINEL SENTINELS";
/// `SENTINEL MYID`, for error messages.
pub const CMD_MYID: &str = "SENTINEL MYID";

/// Longest bad value quoted in an error: garbage can be large.
const QUOTE_MAX: usize = 64;

/// What is wrong with a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The server answered with an error (`ERR No such master with that name`, `NOPERM ...`).
    #[error("{command}: error reply: {message}")]
    Server {
        /// The command.
        command: &'static str,
        /// The server's message.
        message: String,
    },
    /// The reply has the wrong RESP type.
    #[error("{command}: expected {expected}, got {got}")]
    WrongType {
        /// The command.
        command: &'static str,
        /// The expected shape.
        expected: &'static str,
        /// What came instead, e.g. `integer 7`.
        got: String,
    },
    /// A flat field/value array with an odd number of elements.
    #[error("{command}: reply has {len} elements, not field/value pairs")]
    OddLength {
        /// The command.
        command: &'static str,
        /// The number of elements.
        len: usize,
    },
    /// A required field is absent.
    #[error("{command}: field {field:?} is missing")]
    MissingField {
        /// The command.
        command: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field is there but its value is unusable.
    #[error("{command}: field {field:?} = {value:?}: {problem}")]
    BadField {
        /// The command.
        command: &'static str,
        /// The field (or array position, e.g. `[1] port`).
        field: String,
        /// The value, truncated.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// What is wrong with an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The payload is not UTF-8.
    #[error("event {channel}: payload is not utf-8")]
    NotUtf8 {
        /// The channel.
        channel: String,
    },
    /// The payload does not have the channel's format.
    #[error("event {channel}: {problem} in payload {payload:?}")]
    Malformed {
        /// The channel.
        channel: String,
        /// What is wrong, e.g. `old-port "x" is not a port number`.
        problem: String,
        /// The payload, truncated.
        payload: String,
    },
}

/// Cuts `s` to at most [`QUOTE_MAX`] characters for an error message.
/// At most [`QUOTE_MAX`] characters of `s`, with control characters escaped (`\n`, `\u{1b}`): a reply is
/// outside input, and a raw newline or escape sequence in it would forge log lines or colour a terminal.
fn quote(s: &str) -> String {
    let mut t = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == QUOTE_MAX {
            t.push('…');
            break;
        }
        if c.is_control() {
            t.extend(c.escape_default());
        } else {
            t.push(c);
        }
    }
    t
}

/// A short description of a value's type (and small content) for "expected X, got Y".
fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Int(i) => format!("integer {i}"),
        Value::BulkString(b) => format!("string {:?}", quote(&String::from_utf8_lossy(b))),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::SimpleString(s) => format!("status {:?}", quote(s)),
        Value::Okay => "status OK".into(),
        Value::Map(m) => format!("map of {}", m.len()),
        Value::Attribute { .. } => "attribute".into(),
        Value::Set(s) => format!("set of {}", s.len()),
        Value::Double(d) => format!("double {d}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::VerbatimString { text, .. } => format!("verbatim string {:?}", quote(text)),
        Value::BigNumber(_) => "big number".into(),
        Value::Push { .. } => "push".into(),
        Value::ServerError(e) => format!("error {:?}", server_error_text(e)),
        #[allow(unreachable_patterns)]
        _ => "unknown value".into(),
    }
}

/// A scalar as text: strings, statuses and integers. `None` for aggregates, nil and non-UTF-8.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Value::SimpleString(s) => Some(Cow::Borrowed(s)),
        Value::VerbatimString { text, .. } => Some(Cow::Borrowed(text)),
        Value::Okay => Some(Cow::Borrowed("OK")),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        Value::Attribute { data, .. } => text(data),
        _ => None,
    }
}

/// A server error as Redis wrote it: `ERR No such master with that name`.
pub(crate) fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => quote(&format!("{} {d}", e.code())),
        None => quote(e.code()),
    }
}

/// Unwraps RESP3 attributes and turns an error reply into [`ReplyError::Server`].
fn unwrap_reply<'a>(command: &'static str, v: &'a Value) -> Result<&'a Value, ReplyError> {
    match v {
        Value::ServerError(e) => Err(ReplyError::Server {
            command,
            message: server_error_text(e),
        }),
        Value::Attribute { data, .. } => unwrap_reply(command, data),
        other => Ok(other),
    }
}

/// The field/value pairs of a `SENTINEL MASTER` reply: a RESP2 flat array or a RESP3 map.
fn pairs<'a>(
    command: &'static str,
    v: &'a Value,
) -> Result<Vec<(Cow<'a, str>, &'a Value)>, ReplyError> {
    let key = |k: &'a Value| {
        text(k).ok_or_else(|| ReplyError::BadField {
            command,
            field: "(key)".into(),
            value: describe(k),
            problem: "field name is not a string",
        })
    };
    match unwrap_reply(command, v)? {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(ReplyError::OddLength {
                    command,
                    len: items.len(),
                });
            }
            items
                .chunks_exact(2)
                .map(|kv| Ok((key(&kv[0])?, &kv[1])))
                .collect()
        }
        Value::Map(items) => items.iter().map(|(k, v)| Ok((key(k)?, v))).collect(),
        other => Err(ReplyError::WrongType {
            command,
            expected: "an array of field/value pairs or a map",
            got: describe(other),
        }),
    }
}

/// The fields of a `SENTINEL MASTER` reply that [`MasterInfo`] needs (the address comes separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterFields {
    /// `name`.
    pub name: String,
    /// `ip` (the address this Sentinel lists; it lags on the failover leader).
    pub ip: IpAddr,
    /// `port`.
    pub port: u16,
    /// `config-epoch`.
    pub config_epoch: u64,
    /// `flags`, split on commas.
    pub flags: Vec<String>,
    /// `down-after-milliseconds`.
    pub down_after: Duration,
    /// `num-other-sentinels`.
    pub num_other_sentinels: u32,
    /// `quorum`.
    pub quorum: u32,
}

/// Parses a `SENTINEL MASTER <name>` reply.
pub fn parse_master_reply(v: &Value) -> Result<MasterFields, ReplyError> {
    let command = CMD_MASTER;
    let pairs = pairs(command, v)?;
    let get = |field: &'static str| -> Result<Cow<'_, str>, ReplyError> {
        let (_, value) = pairs
            .iter()
            .find(|(k, _)| k == field)
            .ok_or(ReplyError::MissingField { command, field })?;
        text(value).ok_or_else(|| ReplyError::BadField {
            command,
            field: field.into(),
            value: describe(value),
            problem: "not a string or number",
        })
    };
    let num = |field: &'static str| -> Result<u64, ReplyError> {
        let s = get(field)?;
        s.trim().parse::<u64>().map_err(|_| ReplyError::BadField {
            command,
            field: field.into(),
            value: quote(&s),
            problem: "not a non-negative integer",
        })
    };
    let small = |field: &'static str| -> Result<u32, ReplyError> {
        let n = num(field)?;
        u32::try_from(n).map_err(|_| ReplyError::BadField {
            command,
            field: field.into(),
            value: n.to_string(),
            problem: "out of range",
        })
    };

    let name = get("name")?.into_owned();
    if name.is_empty() {
        return Err(ReplyError::BadField {
            command,
            field: "name".into(),
            value: String::new(),
            problem: "empty",
        });
    }
    let ip = parse_ip(command, "ip", &get("ip")?)?;
    let port = parse_port(command, "port", &get("port")?)?;
    let flags: Vec<String> = get("flags")?
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(MasterFields {
        name,
        ip,
        port,
        config_epoch: num("config-epoch")?,
        flags,
        down_after: Duration::from_millis(num("down-after-milliseconds")?),
        num_other_sentinels: small("num-other-sentinels")?,
        quorum: small("quorum")?,
    })
}

fn parse_ip(command: &'static str, field: &str, s: &str) -> Result<IpAddr, ReplyError> {
    s.parse().map_err(|_| ReplyError::BadField {
        command,
        field: field.into(),
        value: quote(s),
        problem: "not an IP address (hostnames are not supported)",
    })
}

fn parse_port(command: &'static str, field: &str, s: &str) -> Result<u16, ReplyError> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ReplyError::BadField {
            command,
            field: field.into(),
            value: quote(s),
            problem: "not a port number from 1 to 65535",
        })
}

/// Parses a `SENTINEL GET-MASTER-ADDR-BY-NAME <name>` reply: `[ip, port]`. Nil means an unknown master.
pub fn parse_addr_reply(v: &Value) -> Result<(IpAddr, u16), ReplyError> {
    let command = CMD_ADDR;
    let items = match unwrap_reply(command, v)? {
        Value::Array(items) | Value::Set(items) => items,
        Value::Nil => {
            return Err(ReplyError::Server {
                command,
                message: "nil reply: no such master".into(),
            });
        }
        other => {
            return Err(ReplyError::WrongType {
                command,
                expected: "an array [ip, port]",
                got: describe(other),
            });
        }
    };
    if items.len() != 2 {
        return Err(ReplyError::WrongType {
            command,
            expected: "an array [ip, port]",
            got: format!("array of {}", items.len()),
        });
    }
    let field_text = |i: usize, field: &'static str| {
        text(&items[i]).ok_or_else(|| ReplyError::BadField {
            command,
            field: field.into(),
            value: describe(&items[i]),
            problem: "not a string",
        })
    };
    let ip = parse_ip(command, "[0] ip", &field_text(0, "[0] ip")?)?;
    let port = parse_port(command, "[1] port", &field_text(1, "[1] port")?)?;
    Ok((ip, port))
}

/// Combines the two answers of one pipeline into a [`MasterInfo`] for `name`: the address from
/// `GET-MASTER-ADDR-BY-NAME`, everything else from `SENTINEL MASTER`.
pub fn master_info(
    name: &str,
    master_reply: &Value,
    addr_reply: &Value,
) -> Result<MasterInfo, ReplyError> {
    let fields = parse_master_reply(master_reply)?;
    if fields.name != name {
        return Err(ReplyError::BadField {
            command: CMD_MASTER,
            field: "name".into(),
            value: quote(&fields.name),
            problem: "not the master that was asked for",
        });
    }
    let (ip, port) = parse_addr_reply(addr_reply)?;
    let failover_in_progress = fields.flags.iter().any(|f| f == "failover_in_progress");
    Ok(MasterInfo {
        name: fields.name,
        ip,
        port,
        config_epoch: fields.config_epoch,
        flags: fields.flags,
        down_after: fields.down_after,
        failover_in_progress,
        num_other_sentinels: fields.num_other_sentinels,
        quorum: fields.quorum,
        peers: None,
    })
}

/// One other Sentinel as a Sentinel lists it in `SENTINEL SENTINELS <name>`: the peers it exchanges hellos
/// with for that master. Used to tell a Sentinel of this deployment from one that only shares the master name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSentinel {
    /// `ip` (the peer's announced address).
    pub ip: IpAddr,
    /// `port`.
    pub port: u16,
    /// `runid`: the peer's `SENTINEL MYID`.
    pub runid: String,
}

/// Parses a `SENTINEL SENTINELS <name>` reply: an array of field/value entries. Entries without a usable
/// `ip`/`port`/`runid` make the whole reply an error, so a garbled list never vouches for anyone.
pub fn parse_sentinels_reply(v: &Value) -> Result<Vec<PeerSentinel>, ReplyError> {
    let command = CMD_SENTINELS;
    let items = match unwrap_reply(command, v)? {
        Value::Array(items) | Value::Set(items) => items,
        other => {
            return Err(ReplyError::WrongType {
                command,
                expected: "an array of sentinel entries",
                got: describe(other),
            });
        }
    };
    items
        .iter()
        .map(|entry| {
            let pairs = pairs(command, entry)?;
            let get = |field: &'static str| -> Result<String, ReplyError> {
                pairs
                    .iter()
                    .find(|(k, _)| k == field)
                    .and_then(|(_, v)| text(v))
                    .map(Cow::into_owned)
                    .ok_or(ReplyError::MissingField { command, field })
            };
            Ok(PeerSentinel {
                ip: parse_ip(command, "ip", &get("ip")?)?,
                port: parse_port(command, "port", &get("port")?)?,
                runid: get("runid")?,
            })
        })
        .collect()
}

/// Parses a `SENTINEL MYID` reply: the Sentinel's 40-hex-digit run id.
pub fn parse_myid_reply(v: &Value) -> Result<String, ReplyError> {
    let command = CMD_MYID;
    let id = text(unwrap_reply(command, v)?).ok_or_else(|| ReplyError::WrongType {
        command,
        expected: "a string",
        got: describe(v),
    })?;
    if id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.into_owned())
    } else {
        Err(ReplyError::BadField {
            command,
            field: "id".into(),
            value: quote(&id),
            problem: "not a 40-digit hex run id",
        })
    }
}

/// Parses a `ROLE` reply and returns the role: `master`, `slave` or `sentinel`.
pub fn parse_role_reply(v: &Value) -> Result<String, ReplyError> {
    let command = CMD_ROLE;
    match unwrap_reply(command, v)? {
        Value::Array(items) if !items.is_empty() => text(&items[0])
            .map(|s| s.into_owned())
            .ok_or_else(|| ReplyError::BadField {
                command,
                field: "[0] role".into(),
                value: describe(&items[0]),
                problem: "not a string",
            }),
        other => Err(ReplyError::WrongType {
            command,
            expected: "a non-empty array",
            got: describe(other),
        }),
    }
}

/// An instance reference at the head of an instance event: `<type> <name> <ip> <port> [@ <master> <ip> <port>]`.
struct Instance<'a> {
    ip: IpAddr,
    port: u16,
    /// The master the instance belongs to: its own name for a master, the `@` part otherwise.
    master: &'a str,
}

/// Parses `<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>`. For `type = master` the
/// `@` part is absent. Anything after that (`#quorum 2/2`) is ignored.
fn parse_instance<'a>(tokens: &[&'a str]) -> Result<Instance<'a>, String> {
    const FORMAT: &str = "<type> <name> <ip> <port> [@ <master> <master-ip> <master-port>]";
    if tokens.len() < 4 {
        return Err(format!("expected {FORMAT}, got {} fields", tokens.len()));
    }
    let (ty, name) = (tokens[0], tokens[1]);
    let ip = ip_token("ip", tokens[2])?;
    let port = port_token("port", tokens[3])?;
    match ty {
        "master" => Ok(Instance {
            ip,
            port,
            master: name,
        }),
        "slave" | "replica" | "sentinel" => {
            if tokens.len() < 8 || tokens[4] != "@" {
                return Err(format!(
                    "a {ty} event needs \"@ <master> <master-ip> <master-port>\" after the instance"
                ));
            }
            ip_token("master-ip", tokens[6])?;
            port_token("master-port", tokens[7])?;
            Ok(Instance {
                ip,
                port,
                master: tokens[5],
            })
        }
        other => Err(format!(
            "instance type {:?} is not master, slave or sentinel",
            quote(other)
        )),
    }
}

fn ip_token(what: &str, s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{what} {:?} is not an IP address", quote(s)))
}

fn port_token(what: &str, s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {:?} is not a port number", quote(s)))
}

/// Channels whose payload is an instance reference (see [`parse_instance`]).
const INSTANCE_CHANNELS: &[&str] = &[
    "+odown",
    "-odown",
    "+sdown",
    "-sdown",
    "+try-failover",
    "+elected-leader",
    "+failover-state-reconf-slaves",
    "+failover-end",
    "+failover-end-for-timeout",
    "+convert-to-slave",
    "+failover-state-select-slave",
    "+failover-state-send-slaveof-noone",
    "+failover-state-wait-promotion",
    "+selected-slave",
    "+slave-reconf-sent",
    "+slave-reconf-inprog",
    "+slave-reconf-done",
    "+failover-detected",
    "+slave",
    "+sentinel",
    "+reboot",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
];

/// Parses one event. `channel` is the Pub/Sub channel (= the event name), `payload` the message.
///
/// `+switch-master`, `+promoted-slave` and `+config-update-from` are checked strictly; the other instance
/// events must carry a well-formed instance reference; `+tilt`/`-tilt` carry free text; any other channel
/// gives [`Event::Other`] with the master taken from the payload when it has the instance format.
pub fn parse_event(channel: &str, payload: &[u8]) -> Result<Event, EventError> {
    let payload = std::str::from_utf8(payload).map_err(|_| EventError::NotUtf8 {
        channel: quote(channel),
    })?;
    let malformed = |problem: String| EventError::Malformed {
        channel: quote(channel),
        problem,
        payload: quote(payload),
    };
    let tokens: Vec<&str> = payload.split_ascii_whitespace().collect();
    match channel {
        "+switch-master" => {
            if tokens.len() != 5 {
                return Err(malformed(format!(
                    "expected 5 fields <name> <old-ip> <old-port> <new-ip> <new-port>, got {}",
                    tokens.len()
                )));
            }
            let old = (
                ip_token("old-ip", tokens[1]).map_err(&malformed)?,
                port_token("old-port", tokens[2]).map_err(&malformed)?,
            );
            let new = (
                ip_token("new-ip", tokens[3]).map_err(&malformed)?,
                port_token("new-port", tokens[4]).map_err(&malformed)?,
            );
            Ok(Event::SwitchMaster {
                master: tokens[0].to_owned(),
                old,
                new,
            })
        }
        "+promoted-slave" => {
            let inst = parse_instance(&tokens).map_err(&malformed)?;
            if tokens[0] == "master" {
                return Err(malformed("the promoted instance must be a slave".into()));
            }
            Ok(Event::PromotedSlave {
                master: inst.master.to_owned(),
                addr: (inst.ip, inst.port),
            })
        }
        "+config-update-from" => {
            let inst = parse_instance(&tokens).map_err(&malformed)?;
            Ok(Event::ConfigUpdateFrom {
                master: inst.master.to_owned(),
            })
        }
        "+tilt" | "-tilt" => Ok(Event::Other {
            channel: channel.to_owned(),
            master: None,
        }),
        c if INSTANCE_CHANNELS.contains(&c) => {
            let inst = parse_instance(&tokens).map_err(&malformed)?;
            Ok(Event::Other {
                channel: channel.to_owned(),
                master: Some(inst.master.to_owned()),
            })
        }
        _ => Ok(Event::Other {
            channel: channel.to_owned(),
            master: parse_instance(&tokens).ok().map(|i| i.master.to_owned()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// A `SENTINEL MASTER` reply as Redis 7.0 sends it (RESP2), with `overrides` replacing or (value
    /// `None`) removing fields.
    fn master_reply(overrides: &[(&str, Option<Value>)]) -> Value {
        let base = [
            ("name", "mymaster"),
            ("ip", "127.0.0.1"),
            ("port", "6379"),
            ("runid", "7f0b5c"),
            ("flags", "master"),
            ("link-pending-commands", "0"),
            ("last-ping-sent", "0"),
            ("down-after-milliseconds", "1000"),
            ("config-epoch", "3"),
            ("num-slaves", "2"),
            ("num-other-sentinels", "2"),
            ("quorum", "2"),
            ("failover-timeout", "10000"),
            ("parallel-syncs", "1"),
        ];
        let mut items = Vec::new();
        for (k, v) in base {
            match overrides.iter().find(|(ok, _)| *ok == k) {
                Some((_, Some(val))) => items.extend([bulk(k), val.clone()]),
                Some((_, None)) => {}
                None => items.extend([bulk(k), bulk(v)]),
            }
        }
        Value::Array(items)
    }

    fn addr_reply(ip: &str, port: &str) -> Value {
        Value::Array(vec![bulk(ip), bulk(port)])
    }

    #[test]
    fn master_info_takes_the_address_from_get_master_addr_and_the_rest_from_sentinel_master() {
        let info = master_info(
            "mymaster",
            &master_reply(&[("flags", Some(bulk("master,failover_in_progress")))]),
            &addr_reply("127.0.0.2", "6380"),
        )
        .unwrap();
        assert_eq!(
            info,
            MasterInfo {
                name: "mymaster".into(),
                ip: "127.0.0.2".parse().unwrap(),
                port: 6380,
                config_epoch: 3,
                flags: vec!["master".into(), "failover_in_progress".into()],
                down_after: Duration::from_millis(1000),
                failover_in_progress: true,
                num_other_sentinels: 2,
                quorum: 2,
                peers: None,
            }
        );
    }

    #[test]
    fn resp3_map_and_integer_values_are_accepted() {
        let Value::Array(items) = master_reply(&[("config-epoch", Some(Value::Int(9)))]) else {
            unreachable!()
        };
        let map = Value::Map(
            items
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect(),
        );
        let info = master_info("mymaster", &map, &addr_reply("::1", "6379")).unwrap();
        assert_eq!(info.config_epoch, 9);
        assert_eq!(info.ip, "::1".parse::<IpAddr>().unwrap());
        assert!(!info.failover_in_progress);
    }

    #[test]
    fn bad_master_replies_give_errors_naming_the_problem() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "integer",
                Value::Int(1),
                "expected an array of field/value pairs or a map, got integer 1",
            ),
            ("nil", Value::Nil, "got nil"),
            ("string", bulk("garbage"), "got string \"garbage\""),
            (
                "odd array",
                Value::Array(vec![bulk("name")]),
                "reply has 1 elements, not field/value pairs",
            ),
            (
                "error",
                redis::parse_redis_value(b"-ERR No such master with that name\r\n").unwrap(),
                "error reply",
            ),
            (
                "missing epoch",
                master_reply(&[("config-epoch", None)]),
                "field \"config-epoch\" is missing",
            ),
            (
                "non-numeric epoch",
                master_reply(&[("config-epoch", Some(bulk("three")))]),
                "field \"config-epoch\" = \"three\": not a non-negative integer",
            ),
            (
                "negative epoch",
                master_reply(&[("config-epoch", Some(Value::Int(-1)))]),
                "not a non-negative integer",
            ),
            (
                "epoch is an array",
                master_reply(&[("config-epoch", Some(Value::Array(vec![])))]),
                "field \"config-epoch\" = \"array of 0\": not a string or number",
            ),
            (
                "ip not an ip",
                master_reply(&[("ip", Some(bulk("redis-1.example")))]),
                "field \"ip\" = \"redis-1.example\": not an IP address",
            ),
            (
                "port zero",
                master_reply(&[("port", Some(bulk("0")))]),
                "field \"port\" = \"0\": not a port number",
            ),
            (
                "quorum huge",
                master_reply(&[("quorum", Some(bulk("99999999999")))]),
                "field \"quorum\" = \"99999999999\": out of range",
            ),
            (
                "down-after missing",
                master_reply(&[("down-after-milliseconds", None)]),
                "field \"down-after-milliseconds\" is missing",
            ),
            (
                "key not a string",
                Value::Array(vec![Value::Nil, bulk("x")]),
                "field name is not a string",
            ),
            (
                "other master",
                master_reply(&[("name", Some(bulk("othermaster")))]),
                "not the master that was asked for",
            ),
        ];
        for (label, reply, want) in cases {
            let err = master_info("mymaster", &reply, &addr_reply("127.0.0.1", "6379"))
                .expect_err(label)
                .to_string();
            assert!(
                err.contains(want),
                "{label}: {err:?} should contain {want:?}"
            );
            assert!(
                err.starts_with("SENTINEL MASTER"),
                "{label}: {err:?} names the command"
            );
        }
    }

    #[test]
    fn bad_addr_replies_give_errors_naming_the_problem() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("nil", Value::Nil, "no such master"),
            (
                "one element",
                Value::Array(vec![bulk("127.0.0.1")]),
                "got array of 1",
            ),
            ("int", Value::Int(5), "got integer 5"),
            (
                "ip garbage",
                addr_reply("x.y", "6379"),
                "\"[0] ip\" = \"x.y\"",
            ),
            (
                "port garbage",
                addr_reply("127.0.0.1", "65536"),
                "\"[1] port\" = \"65536\"",
            ),
            (
                "port array",
                Value::Array(vec![bulk("127.0.0.1"), Value::Array(vec![])]),
                "not a string",
            ),
        ];
        for (label, reply, want) in cases {
            let err = master_info("mymaster", &master_reply(&[]), &reply)
                .expect_err(label)
                .to_string();
            assert!(
                err.contains(want),
                "{label}: {err:?} should contain {want:?}"
            );
            assert!(
                err.starts_with("SENTINEL GET-MASTER-ADDR-BY-NAME"),
                "{label}: {err:?}"
            );
        }
    }

    #[test]
    fn sentinels_reply_lists_the_peers_and_rejects_garbled_entries() {
        let entry = |ip: &str, port: &str, runid: &str| {
            Value::Array(
                [
                    ("name", runid),
                    ("ip", ip),
                    ("port", port),
                    ("runid", runid),
                ]
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
            )
        };
        let id = "a".repeat(40);
        let ok = Value::Array(vec![entry("198.18.0.2", "26379", &id)]);
        assert_eq!(
            parse_sentinels_reply(&ok).unwrap(),
            vec![PeerSentinel {
                ip: "198.18.0.2".parse().unwrap(),
                port: 26379,
                runid: id.clone(),
            }]
        );
        assert_eq!(
            parse_sentinels_reply(&Value::Array(vec![])).unwrap(),
            vec![]
        );
        for (bad, want) in [
            (Value::Okay, "expected an array"),
            (
                Value::Array(vec![entry("host.example", "26379", &id)]),
                "not an IP",
            ),
            (Value::Array(vec![entry("198.18.0.2", "0", &id)]), "port"),
            (
                Value::Array(vec![bulk("x")]),
                "expected an array of field/value",
            ),
        ] {
            let e = parse_sentinels_reply(&bad).unwrap_err().to_string();
            assert!(e.contains("SENTINEL SENTINELS") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn myid_reply_must_be_a_run_id() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(parse_myid_reply(&bulk(id)).unwrap(), id);
        for bad in [Value::Okay, bulk("short"), Value::Nil, Value::Int(7)] {
            assert!(parse_myid_reply(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn role_reply_gives_the_role() {
        let master = Value::Array(vec![bulk("master"), Value::Int(100), Value::Array(vec![])]);
        assert_eq!(parse_role_reply(&master).unwrap(), "master");
        let replica = Value::Array(vec![bulk("slave"), bulk("127.0.0.1"), Value::Int(6379)]);
        assert_eq!(parse_role_reply(&replica).unwrap(), "slave");
        assert!(parse_role_reply(&Value::Array(vec![])).is_err());
        assert!(parse_role_reply(&Value::Okay).is_err());
    }

    #[test]
    fn events_parse_into_their_variants() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: Vec<(&str, &str, Event)> = vec![
            (
                "+switch-master",
                "mymaster 127.0.0.1 6379 127.0.0.2 6380",
                Event::SwitchMaster {
                    master: "mymaster".into(),
                    old: (ip("127.0.0.1"), 6379),
                    new: (ip("127.0.0.2"), 6380),
                },
            ),
            (
                "+promoted-slave",
                "slave 127.0.0.2:6380 127.0.0.2 6380 @ mymaster 127.0.0.1 6379",
                Event::PromotedSlave {
                    master: "mymaster".into(),
                    addr: (ip("127.0.0.2"), 6380),
                },
            ),
            (
                "+config-update-from",
                "sentinel 5b1e9a 127.0.0.3 26379 @ mymaster 127.0.0.1 6379",
                Event::ConfigUpdateFrom {
                    master: "mymaster".into(),
                },
            ),
            (
                "+odown",
                "master mymaster 127.0.0.1 6379 #quorum 2/2",
                Event::Other {
                    channel: "+odown".into(),
                    master: Some("mymaster".into()),
                },
            ),
            (
                "+sdown",
                "sentinel 5b1e9a 127.0.0.3 26379 @ mymaster 127.0.0.1 6379",
                Event::Other {
                    channel: "+sdown".into(),
                    master: Some("mymaster".into()),
                },
            ),
            (
                "+convert-to-slave",
                "slave 127.0.0.1:6379 127.0.0.1 6379 @ mymaster 127.0.0.2 6380",
                Event::Other {
                    channel: "+convert-to-slave".into(),
                    master: Some("mymaster".into()),
                },
            ),
            (
                "+failover-state-reconf-slaves",
                "master mymaster 127.0.0.1 6379",
                Event::Other {
                    channel: "+failover-state-reconf-slaves".into(),
                    master: Some("mymaster".into()),
                },
            ),
            (
                "+tilt",
                "#tilt mode entered",
                Event::Other {
                    channel: "+tilt".into(),
                    master: None,
                },
            ),
            (
                "+new-epoch",
                "7",
                Event::Other {
                    channel: "+new-epoch".into(),
                    master: None,
                },
            ),
        ];
        for (channel, payload, want) in cases {
            assert_eq!(
                parse_event(channel, payload.as_bytes()).unwrap(),
                want,
                "{channel} {payload}"
            );
        }
    }

    #[test]
    fn garbage_events_give_errors_naming_the_problem() {
        let cases: Vec<(&str, &[u8], &str)> = vec![
            ("+switch-master", b"", "expected 5 fields"),
            ("+switch-master", b"mymaster 127.0.0.1 6379", "got 3"),
            (
                "+switch-master",
                b"mymaster 127.0.0.1 x 127.0.0.2 6380",
                "old-port \"x\"",
            ),
            (
                "+switch-master",
                b"mymaster 127.0.0.1 6379 nope 6380",
                "new-ip \"nope\"",
            ),
            (
                "+switch-master",
                b"mymaster 127.0.0.1 6379 127.0.0.2 6380 extra",
                "got 6",
            ),
            ("+switch-master", b"\xff\xfe", "not utf-8"),
            (
                "+promoted-slave",
                b"slave 127.0.0.2:6380 127.0.0.2 6380",
                "needs \"@ <master>",
            ),
            (
                "+promoted-slave",
                b"master mymaster 127.0.0.1 6379",
                "must be a slave",
            ),
            (
                "+promoted-slave",
                b"slave a b c @ mymaster 127.0.0.1 6379",
                "ip \"b\"",
            ),
            ("+config-update-from", b"garbage", "got 1 fields"),
            (
                "+odown",
                b"blob mymaster 127.0.0.1 6379",
                "instance type \"blob\"",
            ),
            (
                "+sdown",
                b"slave x 127.0.0.1 6379 @ mymaster 127.0.0.1 0",
                "master-port \"0\"",
            ),
        ];
        for (channel, payload, want) in cases {
            let err = parse_event(channel, payload)
                .expect_err(channel)
                .to_string();
            assert!(
                err.contains(want),
                "{channel}: {err:?} should contain {want:?}"
            );
            assert!(
                err.starts_with(&format!("event {channel}")),
                "{err:?} names the channel"
            );
        }
    }

    #[test]
    fn long_garbage_is_truncated_in_errors() {
        let junk = "x".repeat(10_000);
        let err = parse_event("+switch-master", junk.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.len() < 300, "error is {} bytes", err.len());
    }

    /// Never panics, whatever the bytes: a cheap deterministic fuzz over payloads and reply shapes.
    #[test]
    fn parsers_never_panic_on_arbitrary_input() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b" @:.0123456789abcmasterlv#-\xff";
        for _ in 0..5_000 {
            let len = (next() % 60) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            for ch in [
                "+switch-master",
                "+promoted-slave",
                "+config-update-from",
                "+odown",
                "+x",
            ] {
                let _ = parse_event(ch, &bytes);
            }
            let v = Value::Array(
                bytes
                    .split(|b| *b == b' ')
                    .map(|b| Value::BulkString(b.to_vec()))
                    .collect(),
            );
            let _ = master_info("mymaster", &v, &v);
            let _ = parse_role_reply(&v);
            let _ = parse_sentinels_reply(&Value::Array(vec![v.clone()]));
            let _ = parse_myid_reply(&v);
        }
    }

    #[test]
    fn a_server_error_cannot_forge_a_log_line() {
        // Found by the fuzz target: a bare newline inside an error reply was quoted as is.
        let v =
            redis::parse_redis_value(b"-ERR first\n2026-11-30T00:00:00Z INFO forged\x1b[31m\r\n")
                .unwrap();
        let e = parse_addr_reply(&v).unwrap_err().to_string();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e:?}");
        assert!(
            e.contains("first\\n2026") && e.contains("\\u{1b}[31m"),
            "{e:?}"
        );
    }
}
