//! raftnode: placeholder while the tuplespace lands.
