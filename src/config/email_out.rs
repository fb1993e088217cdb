//! `[email_out]`: verdicts by e-mail, for the platforms that take alarms as mails with pictures
//! (Immix, SureView): where to send them, how to log in, and which verdicts go.

use serde::Deserialize;

use super::Secret;
use super::secret::check_one_source;

/// How the connection to the mail server is secured.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain SMTP (a relay on the site network or loopback only).
    None,
    /// SMTP, upgraded with STARTTLS before anything is sent (refused if the server cannot).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmailOutConfig {
    /// The mail server; `""` turns e-mail out off.
    pub host: String,
    /// 0: by `tls`, 25 (none), 587 (starttls) or 465 (tls).
    pub port: u16,
    pub tls: EmailTls,
    pub username: String,
    pub password_env: String,
    pub password: Secret,
    pub from: String,
    pub to: Vec<String>,
    /// The subject, with `{verdict}`, `{camera}`, `{alarm_id}`, `{reason}` and `{site}` filled in.
    pub subject: String,
    /// Which verdicts are mailed: `verified`, `false_alarm`, `unverifiable`.
    pub verdicts: Vec<String>,
}

impl Default for EmailOutConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 0,
            tls: EmailTls::default(),
            username: String::new(),
            password_env: String::new(),
            password: Secret::default(),
            from: String::new(),
            to: Vec::new(),
            subject: "{verdict}: {camera} alarm {alarm_id}".into(),
            verdicts: ["verified", "false_alarm", "unverifiable"].map(String::from).to_vec(),
        }
    }
}

const VERDICTS: [&str; 3] = ["verified", "false_alarm", "unverifiable"];
const PLACEHOLDERS: [&str; 5] = ["{verdict}", "{camera}", "{alarm_id}", "{reason}", "{site}"];

impl EmailOutConfig {
    pub fn enabled(&self) -> bool {
        !self.host.trim().is_empty()
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        match (self.port, self.tls) {
            (0, EmailTls::None) => 25,
            (0, EmailTls::Starttls) => 587,
            (0, EmailTls::Tls) => 465,
            (port, _) => port,
        }
    }

    /// Checks the section; errors name the key.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("email_out.{k}");
        check_one_source(&self.password, &self.password_env, "email_out.password").map_err(|e| (key("password"), e))?;
        if !self.enabled() {
            return Ok(());
        }
        let mailbox = |k: &str, v: &str| {
            v.parse::<lettre::message::Mailbox>()
                .map(|_| ())
                .map_err(|e| (k.to_owned(), format!("expected an e-mail address, got {v:?}: {e}")))
        };
        mailbox(&key("from"), &self.from)?;
        if self.to.is_empty() {
            return Err((key("to"), "expected at least one address".into()));
        }
        for (i, to) in self.to.iter().enumerate() {
            mailbox(&format!("email_out.to[{i}]"), to)?;
        }
        let has_password = !(self.password.is_empty() && self.password_env.is_empty());
        if has_password == self.username.is_empty() {
            return Err((
                key("username"),
                "expected a username and a password (password_env or password) together, or neither".into(),
            ));
        }
        if has_password && self.tls == EmailTls::None {
            return Err((
                key("tls"),
                "expected starttls or tls: a password would cross the network in clear".into(),
            ));
        }
        if let Some(v) = self.verdicts.iter().find(|v| !VERDICTS.contains(&v.as_str())) {
            return Err((
                key("verdicts"),
                format!("expected verified, false_alarm or unverifiable, got {v:?}"),
            ));
        }
        let mut rest = self.subject.clone();
        for p in PLACEHOLDERS {
            rest = rest.replace(p, "");
        }
        if let Some(at) = rest.find('{') {
            return Err((
                key("subject"),
                format!(
                    "expected only the placeholders {}, found {:?}",
                    PLACEHOLDERS.join(" "),
                    &rest[at..rest.len().min(at + 20)]
                ),
            ));
        }
        Ok(())
    }
}
