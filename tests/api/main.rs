mod canonical;
mod cli;
mod compat;
mod limits;
mod redis;
mod rotation;
mod stream;
mod support;
