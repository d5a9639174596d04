//! Where pgward connects to the server a config describes.

use super::PostgresConfig;
use crate::postgres::ready::Target;

impl PostgresConfig {
    /// The server, as its superuser over the unix socket.
    pub fn superuser_target(&self) -> Target {
        Target {
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            user: self.init.superuser.clone(),
            password: self.init.password.clone(),
            dbname: "postgres".into(),
        }
    }
}
