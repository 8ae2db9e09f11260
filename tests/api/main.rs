mod canonical;
mod cli;
mod redis;
mod rotation;
mod stream;
mod support;
