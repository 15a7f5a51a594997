//! The Redis schema shared by proxies, `ctl` and deploy pipelines. (Being written.)
