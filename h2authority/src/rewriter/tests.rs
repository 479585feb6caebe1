use super::*;
use crate::AuthorityFixed;
use tokio::io::AsyncWriteExt;

const SOCKET_AUTHORITY: &[u8] = b"var%2Frun%2Fminion%2Fminiond.sock";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn start() -> Vec<u8> {
    let mut s = PREFACE.to_vec();
    s.extend(frame(0x4, 0, 0, &[])); // SETTINGS, none changed
    s
}

fn request(encoder: &mut fluke_hpack::Encoder, path: &str, authority: &[u8]) -> Vec<u8> {
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    encoder.encode(fields)
}

/// Splits a stream into (type, flags, stream, payload) frames, after the preface.
fn frames(mut s: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert!(s.starts_with(PREFACE));
    s = &s[PREFACE.len()..];
    let mut out = Vec::new();
    while !s.is_empty() {
        let len = usize::from(s[0]) << 16 | usize::from(s[1]) << 8 | usize::from(s[2]);
        let stream = u32::from_be_bytes([s[5], s[6], s[7], s[8]]);
        out.push((s[3], s[4], stream, s[9..9 + len].to_vec()));
        s = &s[9 + len..];
    }
    out
}

fn rewrite_all(input: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = Vec::new();
    Rewriter::default().feed(input, &mut out)?;
    Ok(out)
}

/// Sends `input` through an `AuthorityFixed` to a real h2 server; returns each request's
/// authority, path and `x-probe` header as the server saw them.
async fn serve(input: Vec<u8>, want: usize) -> Vec<(String, String, Option<String>)> {
    let (mut client, server_end) = tokio::io::duplex(1 << 22);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(AuthorityFixed::new(server_end))
            .await
            .expect("h2 handshake");
        let mut seen = Vec::new();
        while seen.len() < want {
            let (req, _respond) = conn
                .accept()
                .await
                .expect("a request")
                .expect("the server accepts the request");
            let uri = req.uri();
            seen.push((
                uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                uri.path().to_string(),
                req.headers()
                    .get("x-probe")
                    .map(|v| v.to_str().unwrap_or("?").len().to_string()),
            ));
        }
        seen
    });
    client.write_all(&input).await.expect("write");
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the server saw every request in time")
        .expect("server task");
    drop(client);
    seen
}

#[test]
fn grpc_cores_socket_authority_is_not_an_authority() {
    // Why this crate exists: what grpcio sends for unix:/var/run/minion/miniond.sock.
    assert!(!valid_authority(SOCKET_AUTHORITY));
    assert!(valid_authority(b"localhost:50051"));
    assert!(valid_authority(b"[::1]:8443"));
}

#[tokio::test]
async fn a_socket_path_authority_reaches_h2_as_localhost_and_a_valid_one_is_kept() {
    let mut enc = fluke_hpack::Encoder::new();
    let mut input = start();
    // The encoder indexes as it goes: the second and third blocks lean on the dynamic table.
    for (stream, path, authority) in [
        (1, "/a.B/C", SOCKET_AUTHORITY),
        (3, "/a.B/D", SOCKET_AUTHORITY),
        (5, "/a.B/E", b"example.org:443".as_slice()),
    ] {
        let block = request(&mut enc, path, authority);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
    }
    let seen = serve(input, 3).await;
    let got: Vec<_> = seen
        .iter()
        .map(|(a, p, _)| (a.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("localhost", "/a.B/C"),
            ("localhost", "/a.B/D"),
            ("example.org:443", "/a.B/E")
        ]
    );
}

#[tokio::test]
async fn huffman_coded_blocks_sharing_a_dynamic_table_decode() {
    // RFC 7541 C.4.1–C.4.3: three requests, Huffman strings, each indexing into the previous.
    let blocks: [&[u8]; 3] = [
        &[
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ],
        &[
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ],
        &[
            0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
            0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
        ],
    ];
    let mut r = Rewriter::default();
    let mut input = start();
    for (i, b) in blocks.iter().enumerate() {
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i as u32,
            b,
        ));
    }
    let mut out = Vec::new();
    r.feed(&input, &mut out).expect("RFC examples decode");
    let mut check = fluke_hpack::Decoder::new();
    let decoded: Vec<Vec<(Vec<u8>, Vec<u8>)>> = frames(&out)
        .into_iter()
        .filter(|f| f.0 == HEADERS)
        .map(|f| check.decode(&f.3).expect("re-encoded block decodes"))
        .collect();
    assert_eq!(decoded.len(), 3);
    let field = |i: usize, name: &str| {
        decoded[i]
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(field(0, ":authority").as_deref(), Some("www.example.com"));
    assert_eq!(field(1, "cache-control").as_deref(), Some("no-cache"));
    assert_eq!(field(2, ":path").as_deref(), Some("/index.html"));
    assert_eq!(field(2, "custom-key").as_deref(), Some("custom-value"));
    assert_eq!(r.rewritten(), 0);
}

#[tokio::test]
async fn a_block_over_one_frame_is_split_into_continuations_h2_accepts() {
    let mut enc = fluke_hpack::Encoder::new();
    let probe = "p".repeat(40_000);
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/big"),
        (b":authority", SOCKET_AUTHORITY),
        (b"x-probe", probe.as_bytes()),
    ];
    let block = enc.encode(fields);
    let mut input = start();
    // As a client may send it: split over a HEADERS and two CONTINUATIONs.
    let (a, rest) = block.split_at(10_000);
    let (b, c) = rest.split_at(20_000);
    input.extend(frame(HEADERS, END_STREAM, 1, a));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    let out = rewrite_all(&input).expect("rewrite");
    let fs = frames(&out);
    assert!(fs.len() >= 4, "{} frames", fs.len());
    assert!(fs.iter().all(|f| f.3.len() <= MAX_OUT_PAYLOAD));
    assert_eq!(fs[1].0, HEADERS);
    assert_eq!(fs[1].1 & (END_STREAM | END_HEADERS), END_STREAM);
    let last = fs.last().expect("frames");
    assert_eq!((last.0, last.1), (CONTINUATION, END_HEADERS));
    let seen = serve(input, 1).await;
    assert_eq!(
        seen,
        [("localhost".into(), "/big".into(), Some("40000".into()))]
    );
}

#[test]
fn padding_is_dropped_and_priority_kept() {
    let mut enc = fluke_hpack::Encoder::new();
    let block = request(&mut enc, "/p", SOCKET_AUTHORITY);
    let mut payload = vec![3u8]; // pad length
    payload.extend([0x80, 0, 0, 1, 15]); // exclusive on stream 1, weight 16
    payload.extend(&block);
    payload.extend([0, 0, 0]);
    let mut input = start();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_HEADERS, 3, &payload));
    let fs = frames(&rewrite_all(&input).expect("rewrite"));
    let (kind, flags, stream, p) = &fs[1];
    assert_eq!(
        (*kind, *flags, *stream),
        (HEADERS, PRIORITY | END_HEADERS, 3)
    );
    assert_eq!(&p[..5], &[0x80, 0, 0, 1, 15]);
    let fields = fluke_hpack::Decoder::new()
        .decode(&p[5..])
        .expect("decodes");
    assert!(fields.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
}

#[test]
fn other_frames_pass_byte_for_byte_and_any_split_gives_the_same_stream() {
    let mut enc = fluke_hpack::Encoder::new();
    let mut input = start();
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request(&mut enc, "/x", SOCKET_AUTHORITY),
    ));
    let data = frame(0x0, 0x1, 1, &[7u8; 300]); // DATA, END_STREAM
    let ping = frame(0x6, 0, 0, b"12345678");
    let window = frame(0x8, 0, 0, &[0, 1, 0, 0]);
    input.extend(&data);
    input.extend(&ping);
    input.extend(&window);
    let whole = rewrite_all(&input).expect("rewrite");
    assert!(whole.ends_with(&[data.clone(), ping, window].concat()));
    for cut in 1..input.len() {
        let mut r = Rewriter::default();
        let mut out = Vec::new();
        r.feed(&input[..cut], &mut out).expect("first part");
        r.feed(&input[cut..], &mut out).expect("second part");
        assert_eq!(out, whole, "split at {cut}");
    }
    // And one byte at a time.
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    for b in &input {
        r.feed(std::slice::from_ref(b), &mut out).expect("byte");
    }
    assert_eq!(out, whole);
}

#[test]
fn what_is_not_http2_passes_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(rewrite_all(input).expect("transparent"), input);
}

#[test]
fn protocol_violations_end_the_connection_and_stay_ended() {
    let mut enc = fluke_hpack::Encoder::new();
    let block = request(&mut enc, "/v", SOCKET_AUTHORITY);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            frame(CONTINUATION, END_HEADERS, 1, &block),
            "CONTINUATION without",
        ),
        (
            [frame(HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"x")].concat(),
            "interrupted",
        ),
        (
            [
                frame(HEADERS, 0, 1, &block),
                frame(CONTINUATION, END_HEADERS, 3, &[]),
            ]
            .concat(),
            "interrupted",
        ),
        (frame(PUSH_PROMISE, END_HEADERS, 1, &block), "PUSH_PROMISE"),
        (
            frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1]),
            "padding",
        ),
        (
            frame(HEADERS, PRIORITY | END_HEADERS, 1, &[1, 2]),
            "PRIORITY",
        ),
        (
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]),
            "HPACK",
        ),
    ];
    for (bad, want) in cases {
        let mut r = Rewriter::default();
        let mut out = Vec::new();
        let e = r
            .feed(&[start(), bad].concat(), &mut out)
            .expect_err(want)
            .to_string();
        assert!(e.contains(want), "{e:?} should say {want}");
        let again = r.feed(&start(), &mut out).expect_err("stays failed");
        assert_eq!(again.to_string(), e);
    }
}

#[test]
fn oversized_blocks_are_refused_as_received_and_decoded() {
    let small = Limits {
        max_block: 1000,
        ..LIMITS
    };
    let mut r = Rewriter::new(small);
    let e = r
        .feed(
            &[start(), frame(HEADERS, END_HEADERS, 1, &[0x82; 1001])].concat(),
            &mut Vec::new(),
        )
        .expect_err("frame over the limit");
    assert!(e.to_string().contains("larger than 1000"), "{e}");
    let mut r = Rewriter::new(small);
    let two = [
        start(),
        frame(HEADERS, 0, 1, &[0x82; 600]),
        frame(CONTINUATION, END_HEADERS, 1, &[0x82; 600]),
    ]
    .concat();
    assert!(matches!(
        r.feed(&two, &mut Vec::new()),
        Err(RewriteError::TooLarge {
            what: "as received",
            ..
        })
    ));

    // A tiny block that decodes huge: one 4,000-byte entry indexed, then referenced 400 times.
    let mut bomb = vec![0x40, 0x01, b'x'];
    bomb.extend([0x7f, 0xa1, 0x1e]); // value length 4,000 = 127 + 33 + 30 × 128, not Huffman
    bomb.extend(vec![b'v'; 4000]);
    bomb.extend(vec![0xbe; 400]); // index 62: the entry just added
    let mut r = Rewriter::default();
    assert!(matches!(
        r.feed(
            &[start(), frame(HEADERS, END_HEADERS, 1, &bomb)].concat(),
            &mut Vec::new()
        ),
        Err(RewriteError::TooLarge {
            what: "decoded",
            ..
        })
    ));
}

#[test]
fn a_table_size_update_above_the_servers_is_refused() {
    // A dynamic table size update to 8,192 (31 + 97 + 63 × 128) where 4,096 was advertised.
    let block = [0x3f, 0xe1, 0x3f, 0x82];
    let e = rewrite_all(&[start(), frame(HEADERS, END_HEADERS, 1, &block)].concat())
        .expect_err("table larger than advertised");
    assert!(e.to_string().contains("HPACK"), "{e}");
}
