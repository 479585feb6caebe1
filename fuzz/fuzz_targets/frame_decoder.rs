//! The frame decoder on arbitrary bytes, as a hostile guest (or host) would send them: it must never
//! panic, never accept a frame over the cap, and decode the same frames however the bytes are split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use minion_channel::frame::{decode_frame, encode_frame, FrameReader};
use minion_proto::guest::{GuestFrame, HostFrame};
use prost::Message;

/// A small cap too, so the fuzzer reaches the "too large" paths cheaply.
const CAPS: [usize; 2] = [minion_channel::MAX_FRAME, 64];

fn decode_all<M: Message + Default>(data: &[u8], max: usize) -> Vec<M> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Ok(Some(m)) = decode_frame::<M>(&mut buf, max) {
        assert!(m.encoded_len() <= max, "accepted a frame over the cap");
        out.push(m);
    }
    out
}

/// A reader that hands out the input in uneven pieces.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.step = self.step % 7 + 1;
        let n = self.step.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    for max in CAPS {
        let whole: Vec<GuestFrame> = decode_all(data, max);
        let _: Vec<HostFrame> = decode_all(data, max);

        // The blocking reader over a trickle must see the same frames as the buffer decoder.
        let mut reader = FrameReader::new(Trickle { data, step: 0 }, max);
        let mut trickled = Vec::new();
        while let Ok(Some(f)) = reader.read_frame::<GuestFrame>() {
            trickled.push(f);
        }
        assert_eq!(whole, trickled);

        // Whatever was accepted re-encodes within the cap.
        for f in &whole {
            encode_frame(f, max).expect("accepted frames re-encode");
        }
    }
});
