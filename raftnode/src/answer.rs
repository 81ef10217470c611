//! Building answers: every result and response the machine, the node and the client endpoint
//! give a client is made here, so an error always has the same shape.

use tuplespace::{Tuple, TupleId, codec};

use crate::proto::{self, Found, IdTuple, error::Code, response};

/// A response carrying `result` (the node adds its leader hint where it knows one).
pub fn respond(result: response::Result) -> proto::Response {
    proto::Response {
        result: Some(result),
        ..Default::default()
    }
}

/// An error result.
pub fn error(code: Code, message: impl Into<String>) -> response::Result {
    response::Result::Error(proto::Error {
        code: code as i32,
        message: message.into(),
    })
}

/// A tuple with its id, as the wire carries it.
pub fn id_tuple(id: TupleId, tuple: &Tuple) -> IdTuple {
    IdTuple {
        id,
        tuple: codec::tuple_to_bytes(tuple),
    }
}

/// The answer of a read or take that found `item` (or nothing).
pub fn found(item: Option<(TupleId, &Tuple)>) -> response::Result {
    response::Result::Found(Found {
        item: item.map(|(id, t)| id_tuple(id, t)),
    })
}
