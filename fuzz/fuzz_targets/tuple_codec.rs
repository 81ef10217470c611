//! The tuple, template and space codecs: arbitrary bytes never panic, and whatever decodes
//! encodes back to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tuplespace::{Space, codec};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(tuple) = codec::decode_tuple(bytes) {
                let again = codec::decode_tuple(&codec::tuple_to_bytes(&tuple));
                assert_eq!(again.as_ref(), Ok(&tuple), "a tuple does not round-trip");
            }
        }
        1 => {
            if let Ok(template) = codec::decode_template(bytes) {
                let encoded = codec::template_to_bytes(&template);
                let again = codec::decode_template(&encoded).expect("re-decodes");
                assert_eq!(codec::template_to_bytes(&again), encoded);
            }
        }
        _ => {
            if let Ok(space) = Space::decode(bytes) {
                let encoded = space.encode();
                let again = Space::decode(&encoded).expect("re-decodes");
                assert_eq!(again.encode(), encoded, "a space does not round-trip");
            }
        }
    }
});
