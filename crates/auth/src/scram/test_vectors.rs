//! Fixed SCRAM conversations for user "user", password "pencil", shared by
//! the client, server and credential tests.
//!
//! The nonces and salts were drawn at random once; every other value was
//! computed independently of this crate, with a short Python script using
//! `hashlib.pbkdf2_hmac`, `hmac` and `hashlib.md5` (RFC 5802 §3, MongoDB's
//! SCRAM-SHA-1 password digest from auth.md). That script was first checked
//! against the worked conversations in auth.md. The iteration count is the
//! minimum, 4096, to keep debug-build tests fast.

use super::Mechanism;

pub(crate) struct Vector {
    pub(crate) mechanism: Mechanism,
    pub(crate) client_nonce: &'static str,
    pub(crate) server_nonce_suffix: &'static str,
    pub(crate) salt: &'static str,
    pub(crate) iterations: u32,
    pub(crate) stored_key: &'static str,
    pub(crate) server_key: &'static str,
    pub(crate) client_first: &'static str,
    pub(crate) server_first: &'static str,
    pub(crate) client_final: &'static str,
    pub(crate) server_final: &'static str,
}

pub(crate) const USER: &str = "user";
pub(crate) const PASSWORD: &str = "pencil";

pub(crate) const SHA1: Vector = Vector {
    mechanism: Mechanism::ScramSha1,
    client_nonce: "HItJf50WURZBM709lokRHoASqN4FxmGk",
    server_nonce_suffix: "ub08p21meV2r/4zSCVIvcuuTlEkHiGUn",
    salt: "mCE89o0MVJ6xNiMTz1lAHw==",
    iterations: 4096,
    stored_key: "ww/KLk5l7cMFe8P2i6dolA7TsMw=",
    server_key: "UTKNT5tittF/Qh+ckrctZxp21e0=",
    client_first: "n,,n=user,r=HItJf50WURZBM709lokRHoASqN4FxmGk",
    server_first: "r=HItJf50WURZBM709lokRHoASqN4FxmGkub08p21meV2r/4zSCVIvcuuTlEkHiGUn,\
                   s=mCE89o0MVJ6xNiMTz1lAHw==,i=4096",
    client_final: "c=biws,r=HItJf50WURZBM709lokRHoASqN4FxmGkub08p21meV2r/4zSCVIvcuuTlEkHiGUn,\
                   p=ovXWT+hKxbHSIQSIRhrdzv+kV9E=",
    server_final: "v=2fd6Z38hVqQXXEPtbP73A/xOWPA=",
};

pub(crate) const SHA256: Vector = Vector {
    mechanism: Mechanism::ScramSha256,
    client_nonce: "FfKjUpwxrQDJ66xGk+ynDtDomfuNrbJn",
    server_nonce_suffix: "uf+K8JkIUa/ftUhpjPkEAcvPt9XEYUS/",
    salt: "WDoSoL6bdLzcBWXCkUTS+xf3B6+aPKN9nOQlUQ==",
    iterations: 4096,
    stored_key: "IL0+aAzpRdTi2tt9aosq0YgzimWVI0h1dWVovvCdhk0=",
    server_key: "V4CS5sFIvncq634UkCaI9sNX0XH4qfJzpGu0Hc/rLEI=",
    client_first: "n,,n=user,r=FfKjUpwxrQDJ66xGk+ynDtDomfuNrbJn",
    server_first: "r=FfKjUpwxrQDJ66xGk+ynDtDomfuNrbJnuf+K8JkIUa/ftUhpjPkEAcvPt9XEYUS/,\
                   s=WDoSoL6bdLzcBWXCkUTS+xf3B6+aPKN9nOQlUQ==,i=4096",
    client_final: "c=biws,r=FfKjUpwxrQDJ66xGk+ynDtDomfuNrbJnuf+K8JkIUa/ftUhpjPkEAcvPt9XEYUS/,\
                   p=r/kWSlQi5v/vyacG6U4V0a+bfLjRUxSIrur7cWEoKZE=",
    server_final: "v=rO5Xb7TZ9C22fXZNSlysGYa4t/7OBGAz0YeX17gzdbA=",
};
