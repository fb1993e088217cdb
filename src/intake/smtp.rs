//! NVR alarm e-mails: a small receiving SMTP server.
