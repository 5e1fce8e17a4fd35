//! The `aliyun` preset: the connection the Alibaba Cloud IoT Platform
//! documents for server-side subscription over AMQP 1.0.
//!
//! - Endpoint `amqps://${uid}.iot-amqp.${region}.aliyuncs.com:5671`, or the
//!   instance's own endpoint; TLS only.
//! - SASL PLAIN with the user name
//!   `${clientId}|authMode=aksign,signMethod=${signMethod},timestamp=${ms},authId=${accessKeyId},iotInstanceId=${instanceId},consumerGroupId=${groupId}|`
//!   (`iotInstanceId` left out when empty; `authMode=ststoken,securityToken=${token}`
//!   with an STS token) and the password
//!   `base64(HMAC_${signMethod}(accessKeySecret, "authId=${accessKeyId}&timestamp=${ms}"))`
//!   (`authId=…&securityToken=…&timestamp=…` with an STS token: the keys
//!   sorted).
//!
//! Invariants: the access key secret and the STS token are read from the
//! environment (or a file) when a connection is opened, never from the
//! config file; they, the password and the user name (which carries the
//! STS token) appear in no log line, error or `Debug` output. A login is
//! signed afresh for every connection attempt, so its timestamp is current.

use std::path::PathBuf;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use super::login::Login;
use crate::knob::KnobError;
use crate::secret::Secret;

/// The platform's server-side subscription endpoint and signed login.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AliyunConfig {
    /// The Alibaba Cloud account id, for the public instance's endpoint
    /// `${uid}.iot-amqp.${region}.aliyuncs.com`.
    pub uid: String,
    /// The region id, such as `cn-shanghai`.
    pub region: String,
    /// The instance's own AMQP endpoint (`host`, `host:port` or
    /// `amqps://host:port`), for an instance that has one; it replaces the
    /// endpoint built from `uid` and `region`. Port 5671 when not given.
    pub endpoint: Option<String>,
    /// The IoT instance id; empty for the public instance.
    pub instance_id: String,
    /// The consumer group id the platform assigned to this subscription.
    pub consumer_group_id: String,
    /// The client id the platform shows for this client. With
    /// `connections > 1`, connection `i` (from 1) uses `${client_id}-${i}`.
    /// Default `laneway`.
    pub client_id: String,
    /// The AccessKey id (not a secret).
    pub access_key_id: String,
    /// The environment variable holding the AccessKey secret. Default
    /// `ALIYUN_ACCESS_KEY_SECRET`.
    pub access_key_secret_env: String,
    /// A file holding the AccessKey secret instead (trailing whitespace is
    /// ignored), for secrets mounted as files.
    pub access_key_secret_file: Option<PathBuf>,
    /// The environment variable holding an STS security token, when the
    /// key pair is a temporary one (`authMode=ststoken`).
    pub security_token_env: Option<String>,
    /// The signature: `hmacsha1` (default), `hmacsha256` or `hmacmd5`.
    pub sign_method: SignMethod,
}

impl Default for AliyunConfig {
    fn default() -> Self {
        AliyunConfig {
            uid: String::new(),
            region: String::new(),
            endpoint: None,
            instance_id: String::new(),
            consumer_group_id: String::new(),
            client_id: "laneway".into(),
            access_key_id: String::new(),
            access_key_secret_env: "ALIYUN_ACCESS_KEY_SECRET".into(),
            access_key_secret_file: None,
            security_token_env: None,
            sign_method: SignMethod::HmacSha1,
        }
    }
}

impl std::fmt::Debug for AliyunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing here is a secret (secrets are only named), but keep the
        // list explicit so that a secret field added later is not shown.
        f.debug_struct("AliyunConfig")
            .field("uid", &self.uid)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("instance_id", &self.instance_id)
            .field("consumer_group_id", &self.consumer_group_id)
            .field("client_id", &self.client_id)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret_env", &self.access_key_secret_env)
            .field("access_key_secret_file", &self.access_key_secret_file)
            .field("security_token_env", &self.security_token_env)
            .field("sign_method", &self.sign_method)
            .finish()
    }
}

/// The HMAC the password is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignMethod {
    /// HMAC-SHA1 (the platform's default).
    #[default]
    HmacSha1,
    /// HMAC-SHA256.
    HmacSha256,
    /// HMAC-MD5.
    HmacMd5,
}

impl SignMethod {
    /// The name the user name carries.
    pub fn as_str(self) -> &'static str {
        match self {
            SignMethod::HmacSha1 => "hmacsha1",
            SignMethod::HmacSha256 => "hmacsha256",
            SignMethod::HmacMd5 => "hmacmd5",
        }
    }
}

/// `base64(HMAC_method(secret, content))`: the platform's password
/// signature.
pub fn sign(method: SignMethod, secret: &[u8], content: &[u8]) -> String {
    fn mac<M: Mac + hmac::digest::KeyInit>(secret: &[u8], content: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        match <M as hmac::digest::KeyInit>::new_from_slice(secret) {
            Ok(mut m) => {
                m.update(content);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    let digest = match method {
        SignMethod::HmacSha1 => mac::<Hmac<sha1::Sha1>>(secret, content),
        SignMethod::HmacSha256 => mac::<Hmac<sha2::Sha256>>(secret, content),
        SignMethod::HmacMd5 => mac::<Hmac<md5::Md5>>(secret, content),
    };
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The credentials a login is signed with, read when connecting.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The AccessKey secret.
    pub secret: Secret,
    /// The STS security token, for a temporary key pair.
    pub security_token: Option<Secret>,
}

impl AliyunConfig {
    /// Checks the knobs (not the secrets, which are read when connecting).
    pub fn validate(&self) -> Result<(), KnobError> {
        let required = [
            ("aliyun.consumer_group_id", &self.consumer_group_id),
            ("aliyun.access_key_id", &self.access_key_id),
            ("aliyun.client_id", &self.client_id),
        ];
        for (knob, value) in required {
            if value.trim().is_empty() {
                return Err(KnobError::new(knob, "must be set"));
            }
        }
        if self.endpoint.is_none() && (self.uid.is_empty() || self.region.is_empty()) {
            return Err(KnobError::new(
                "aliyun.uid",
                "`uid` and `region` build the endpoint: set both, or `endpoint`",
            ));
        }
        // The user name's separators: a value holding one would change
        // what the platform reads.
        for (knob, value) in [
            ("aliyun.client_id", &self.client_id),
            ("aliyun.access_key_id", &self.access_key_id),
            ("aliyun.instance_id", &self.instance_id),
            ("aliyun.consumer_group_id", &self.consumer_group_id),
        ] {
            if value.contains(['|', ',', '=']) {
                return Err(KnobError::new(
                    knob,
                    format!("{value:?} holds one of | , = (the user name's separators)"),
                ));
            }
        }
        self.host_port()?;
        Ok(())
    }

    /// The endpoint's host and port.
    pub fn host_port(&self) -> Result<(String, u16), KnobError> {
        let Some(endpoint) = &self.endpoint else {
            return Ok((
                format!("{}.iot-amqp.{}.aliyuncs.com", self.uid, self.region),
                5671,
            ));
        };
        let bare = endpoint.trim();
        let bare = match bare.split_once("://") {
            Some(("amqps", rest)) => rest,
            Some((scheme, _)) => {
                return Err(KnobError::new(
                    "aliyun.endpoint",
                    format!("the platform takes TLS only (amqps://), not {scheme}://"),
                ));
            }
            None => bare,
        };
        let bare = bare.trim_end_matches('/');
        let (host, port) = match bare.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => (host, port),
                Err(_) => {
                    return Err(KnobError::new(
                        "aliyun.endpoint",
                        format!("{port:?} is not a port"),
                    ));
                }
            },
            None => (bare, 5671),
        };
        if host.is_empty() {
            return Err(KnobError::new("aliyun.endpoint", "the host is empty"));
        }
        Ok((host.to_string(), port))
    }

    /// Reads the secret (and the STS token) from where the config names.
    pub fn credentials(&self) -> Result<Credentials, String> {
        let secret = crate::env::read_secret(
            self.access_key_secret_file.as_deref(),
            &self.access_key_secret_env,
            "AccessKey secret",
        )?;
        let security_token = match &self.security_token_env {
            Some(var) => Some(Secret::new(std::env::var(var).map_err(|_| {
                format!("environment variable {var} is not set (it should hold the STS token)")
            })?)),
            None => None,
        };
        Ok(Credentials {
            secret,
            security_token,
        })
    }

    /// The signed login of connection `number` (from 1 of `connections`)
    /// at `timestamp_ms`.
    pub fn login(
        &self,
        credentials: &Credentials,
        timestamp_ms: i64,
        number: usize,
        connections: usize,
    ) -> Result<Login, KnobError> {
        let (host, port) = self.host_port()?;
        let client_id = if connections > 1 {
            format!("{}-{number}", self.client_id)
        } else {
            self.client_id.clone()
        };
        let method = self.sign_method.as_str();
        let id = &self.access_key_id;
        let (mode, content) = match &credentials.security_token {
            None => (
                "authMode=aksign".to_string(),
                format!("authId={id}&timestamp={timestamp_ms}"),
            ),
            Some(token) => (
                format!("authMode=ststoken,securityToken={}", token.expose()),
                format!(
                    "authId={id}&securityToken={}&timestamp={timestamp_ms}",
                    token.expose()
                ),
            ),
        };
        let instance = if self.instance_id.is_empty() {
            String::new()
        } else {
            format!(",iotInstanceId={}", self.instance_id)
        };
        let username = format!(
            "{client_id}|{mode},signMethod={method},timestamp={timestamp_ms},authId={id}{instance},consumerGroupId={}|",
            self.consumer_group_id
        );
        let password = sign(
            self.sign_method,
            credentials.secret.expose().as_bytes(),
            content.as_bytes(),
        );
        Ok(Login {
            host,
            port,
            tls: true,
            username: username.into(),
            password: password.into(),
            shown_as: format!(
                "aliyun {}:{port} client {client_id} group {}",
                self.host_port()?.0,
                self.consumer_group_id
            ),
        })
    }
}
