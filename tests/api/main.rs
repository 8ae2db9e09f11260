mod canonical;
mod cli;
mod redis;
mod rotation;
mod support;
