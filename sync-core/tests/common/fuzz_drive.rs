//! What the fuzz targets do with their input, shared with the stable replay test
//! (`tests/fuzz_replay.rs`) through `#[path]` so both run exactly the same code.
#![allow(dead_code)] // each fuzz target uses one of the two drivers

use automerge::AutoCommit;
use cartwise_schema::{BootId, ClockReading, MonoMillis, WallMillis};
use cartwise_sync_core::message::Role;
use cartwise_sync_core::session::{LocalIdentity, SessionConfig, Side};
use cartwise_sync_core::{
    DocId, FrameDecoder, HubActors, Message, Output, PeerDocState, Session, SessionEvent,
};

/// `sync_frame`: the first byte picks a chunk size; the rest goes through a `FrameDecoder`
/// in chunks, every frame through `Message::decode`, known messages through a re-encode
/// round trip, `Sync` bodies through Automerge's decoder and the authority check. The whole
/// input is also decoded as one payload.
pub fn drive_frames(data: &[u8]) {
    let _ = Message::decode(data);
    let (chunk, body) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first % 32) + 1, rest),
        None => (1, data),
    };
    let mut decoder = FrameDecoder::new();
    for piece in body.chunks(chunk) {
        if decoder.feed(piece).is_err() {
            return;
        }
        loop {
            match decoder.next() {
                Ok(Some(payload)) => check_payload(&payload),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn check_payload(payload: &[u8]) {
    let Ok(message) = Message::decode(payload) else {
        return;
    };
    if message.kind().is_some() {
        let encoded = message.encode().expect("a decoded message re-encodes");
        assert_eq!(Message::decode(&encoded).expect("re-decodes"), message);
    }
    if let Message::Sync(body) = message
        && let Ok(sync) = automerge::sync::Message::decode(&body.data)
    {
        let _ = cartwise_sync_core::authority::check_sync_message(
            &body.doc,
            &sync,
            &HubActors::default(),
        );
        // The hub's path: only the changes its document lacks.
        let _ = cartwise_sync_core::authority::check_new_changes(
            &body.doc,
            &sync,
            &HubActors::default(),
            &automerge::Automerge::new(),
        );
    }
}

const FUZZ_BOOT: &str = "0b1e3c2a-0000-4000-8000-00000000f022";
const FUZZ_CHAIN: &str = "0b1e3c2a-0000-4000-8000-000000000001";

fn fuzz_clock(mono: u64) -> Option<ClockReading> {
    Some(ClockReading {
        wall: WallMillis::new(1_700_000_000_000 + i64::try_from(mono).ok()?),
        boot: FUZZ_BOOT.parse::<BootId>().ok()?,
        mono: MonoMillis::new(mono),
    })
}

/// `sync_session`: byte 0 bit 0 picks the side (responder when set), bits 1..6 the chunk
/// size; the rest is the peer's stream, fed in chunks, 700 ms apart, with timeouts handled
/// and outputs drained after every call. A responder admits every `Hello`; `Sync` bodies go
/// into one document through `PeerDocState::receive`.
pub fn drive_session(data: &[u8]) {
    let Some((first, stream)) = data.split_first() else {
        return;
    };
    let side = if first & 1 == 1 {
        Side::Responder
    } else {
        Side::Initiator
    };
    let chunk = usize::from((first >> 1) % 32) + 1;
    let (Some(start), Ok(chain)) = (fuzz_clock(0), FUZZ_CHAIN.parse()) else {
        return;
    };
    let identity = LocalIdentity {
        role: if side == Side::Responder {
            Role::Hub
        } else {
            Role::Device
        },
        chain,
        branch: None,
        device: None,
        schema_version: 1,
    };
    let mut session = Session::new(SessionConfig::new(side), identity, start);
    let mut document = AutoCommit::new();
    let mut states: Vec<PeerDocState> = Vec::new();
    let hub_actors = HubActors::default();
    let mut mono = 0;
    for piece in stream.chunks(chunk) {
        mono += 700;
        let Some(now) = fuzz_clock(mono) else { return };
        let _ = session.handle_bytes(now, piece);
        if session.poll_timeout().is_some_and(|due| due <= mono) {
            let _ = session.handle_timeout(now);
        }
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(_) => {}
                Output::Event(SessionEvent::PeerHello(_)) if side == Side::Responder => {
                    let _ = session.admit(now);
                }
                Output::Event(SessionEvent::SyncReceived(body)) => {
                    receive(&mut states, &mut document, &body, &hub_actors);
                }
                Output::Event(_) => {}
            }
        }
        assert!(session.pending_outputs() == 0);
    }
}

fn receive(
    states: &mut Vec<PeerDocState>,
    document: &mut AutoCommit,
    body: &cartwise_sync_core::message::SyncBody,
    hub_actors: &HubActors,
) {
    let doc: DocId = body.doc;
    let index = match states.iter().position(|state| state.doc() == doc) {
        Some(index) => index,
        None if states.len() < 4 => {
            states.push(PeerDocState::new(doc));
            states.len() - 1
        }
        None => return,
    };
    let state = &mut states[index];
    if state.receive(document, body, hub_actors).is_ok() {
        let _ = state.generate(document);
    }
}

/// `enroll_wire`: the enrollment and renewal frames a hub reads from devices that hold no
/// certificate yet (and the answers a device reads), and enrollment URLs: the first four
/// bytes as a frame header, the rest as each payload type, the whole input as a URL.
pub fn drive_enroll(data: &[u8]) {
    use cartwise_sync_core::identity::{
        EnrollRequest, EnrollResponse, EnrollUrl, RenewRequest, decode_enroll_payload,
        enroll_frame_len,
    };
    if let Some((header, payload)) = data.split_first_chunk::<4>() {
        let _ = enroll_frame_len(*header);
        let _ = decode_enroll_payload::<EnrollRequest>(payload);
        let _ = decode_enroll_payload::<RenewRequest>(payload);
        let _ = decode_enroll_payload::<EnrollResponse>(payload);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<EnrollUrl>();
    }
}
