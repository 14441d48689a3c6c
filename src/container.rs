pub struct Container;
#[derive(Debug, thiserror::Error)]
#[error("x")]
pub struct Error;
pub enum Status {}
