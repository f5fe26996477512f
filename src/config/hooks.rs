//! `[[policy.verify]]`: verification hooks, each read by its `type` and
//! built into a [`HookSpec`].

use std::time::Duration;

use super::raw::{RawHeaderValue, RawHook};
use super::span::FieldPath;
use super::validator::{Validator, root};
use crate::verify::HookSpec;

impl Validator<'_> {
    /// The program and arguments of a command (a verification hook or a
    /// reload action, named by `what`) at `path`; every variable it may
    /// inherit is checked not to hold a secret the configuration
    /// references. `None` without a program.
    pub(super) fn command_line<'c>(
        &mut self,
        path: &FieldPath,
        command: &'c [String],
        inherit_env: &[String],
        what: &str,
    ) -> Option<(&'c String, &'c [String])> {
        let Some((program, args)) = command.split_first() else {
            self.error(&path.key("command"), "needs at least the program to run");
            return None;
        };
        for (i, name) in inherit_env.iter().enumerate() {
            if self.secret_envs.contains(name) {
                self.error(
                    &path.key("inherit_env").index(i),
                    format!(
                        "`{name}` holds a secret this configuration references; a {what} command must not inherit it"
                    ),
                );
            }
        }
        Some((program, args))
    }

    /// Reads the verification hook at `path` by its `type`; `None` when it
    /// has errors (reported).
    pub(super) fn raw_hook(&mut self, path: &FieldPath) -> Option<RawHook> {
        let (kind, table) = self.tagged_table(
            path,
            &RawHook::KINDS,
            "verification hook",
            "{ type = \"motherduck\" }",
        )?;
        match kind {
            "http" => self.variant(table).map(RawHook::Http),
            "command" => self.variant(table).map(RawHook::Command),
            "ack" => self.variant(table).map(RawHook::Ack),
            _ => self.variant(table).map(RawHook::Motherduck),
        }
    }

    /// Builds the hook a [`RawHook`] describes; `None` when it has errors
    /// (reported).
    pub(super) fn hook(&mut self, raw: &RawHook, path: &FieldPath) -> Option<HookSpec> {
        use crate::verify::{AckHook, BuiltinCheck, CommandHook, HeaderValueSpec, HttpProbe};
        // For telling which header a builder's error is about.
        let mut header_names: Vec<&str> = Vec::new();
        let built = match raw {
            RawHook::Http(h) => {
                header_names = h.headers.keys().map(String::as_str).collect();
                let mut b = HttpProbe::builder(h.url.clone());
                if let Some(m) = &h.method {
                    b = b.method(m.clone());
                }
                for (name, v) in &h.headers {
                    let value = match v {
                        RawHeaderValue::Literal(l) => HeaderValueSpec::Literal(l.clone()),
                        RawHeaderValue::Secret(r) => {
                            let (s, _) = self.secret_ref(r, &path.key("headers").key(name))?;
                            HeaderValueSpec::Secret(s)
                        }
                    };
                    b = b.header(name.clone(), value);
                }
                if let Some(st) = &h.expect_status {
                    b = b.expect_status(st.clone());
                }
                if let Some(f) = &h.json_field {
                    b = b.json_field(f.clone());
                }
                if let Some(d) = self.opt_duration(&h.interval, &path.key("interval")) {
                    b = b.interval(d);
                }
                if let Some(d) = self.opt_duration(&h.deadline, &path.key("deadline")) {
                    b = b.deadline(d);
                }
                if let Some(d) = self.opt_duration(&h.request_timeout, &path.key("request_timeout"))
                {
                    b = b.request_timeout(d);
                }
                b.build().map(HookSpec::Http)
            }
            RawHook::Command(c) => {
                let (program, args) =
                    self.command_line(path, &c.command, &c.inherit_env, "verification")?;
                let mut b = CommandHook::builder(program.clone())
                    .args(args.iter().cloned())
                    .pass_token(c.pass_token)
                    .inherit_env(c.inherit_env.iter().cloned());
                if let Some(d) = self.opt_duration(&c.timeout, &path.key("timeout")) {
                    b = b.timeout(d);
                }
                if let Some(d) = self.opt_duration(&c.interval, &path.key("interval")) {
                    b = b.interval(d);
                }
                if let Some(d) = self.opt_duration(&c.deadline, &path.key("deadline")) {
                    b = b.deadline(d);
                }
                b.build().map(HookSpec::Command)
            }
            RawHook::Ack(a) => {
                let d = self.duration(&a.deadline, &path.key("deadline"), Duration::from_secs(600));
                AckHook::new(d).map(HookSpec::Ack)
            }
            RawHook::Motherduck(m) => {
                let i = self.duration(&m.interval, &path.key("interval"), Duration::from_secs(5));
                let d = self.duration(&m.deadline, &path.key("deadline"), Duration::from_secs(60));
                BuiltinCheck::new(i, d).map(HookSpec::MotherDuck)
            }
        };
        match built {
            Ok(h) => Some(h),
            Err(e) => {
                // The builders check every setting at once and answer with
                // one message; point at the setting it names.
                let field = hook_error_field(&e, &header_names);
                self.error(&field.map_or(path.clone(), |f| path.join(&f)), e);
                None
            }
        }
    }
}

/// Which hook setting a hook builder's error is about, from its wording;
/// `None` leaves the error on the hook as a whole. The hook modules'
/// messages name the setting first, which is what this relies on.
fn hook_error_field(message: &str, header_names: &[&str]) -> Option<FieldPath> {
    if let Some(name) = header_names
        .iter()
        .find(|n| message.contains(&format!("header `{n}`")))
    {
        return Some(root().key("headers").key(name));
    }
    let field = if message.contains("probe url") {
        "url"
    } else if message.starts_with("invalid http method") {
        "method"
    } else if message.starts_with("invalid header name") {
        "headers"
    } else if message.starts_with("expect_status") || message.starts_with("expected status") {
        "expect_status"
    } else if message.starts_with("json_field") {
        "json_field"
    } else if message.starts_with("the command program") {
        "command"
    } else if message.contains("inherit_env") {
        "inherit_env"
    } else if message.starts_with("request_timeout") {
        "request_timeout"
    } else if message.starts_with("timeout") {
        "timeout"
    } else if message.starts_with("interval") {
        "interval"
    } else if message.starts_with("deadline") {
        "deadline"
    } else {
        return None;
    };
    Some(root().key(field))
}
