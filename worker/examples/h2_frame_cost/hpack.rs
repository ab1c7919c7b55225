//! The HPACK codecs the frame layer is measured over, behind one trait:
//!
//! - `loona-hpack` 0.4: the codec sozu's HTTP/2 mux used (a maintained fork of `hpack`, with
//!   the 2024 fix for its table-size panic), the "as sozu does" of the issue. Its Huffman
//!   decoder builds its decoding table (hash maps) for every Huffman-coded string, and its
//!   encoder never Huffman-codes nor indexes a value whose name is in the static table.
//! - `httlib-hpack` 0.1: a table-driven Huffman decoder (5 bits at a time); its API hands
//!   every field back as two owned `Vec`s. Measured to show what the choice of codec weighs.

/// An HPACK decoder and encoder pair, one per connection.
pub trait Hpack {
    const NAME: &'static str;
    fn create() -> Self;
    /// Decode a whole header block, handing each field to `f`. `Err`: the block does not
    /// decode (a connection error, COMPRESSION_ERROR).
    fn decode(&mut self, block: &[u8], f: impl FnMut(&[u8], &[u8])) -> Result<(), ()>;
    /// Encode one response field.
    fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>);
    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the encoder's table shrinks to it, announced at
    /// the start of the next block ([`Hpack::start_block`]).
    fn limit_encoder_table(&mut self, size: usize);
    fn start_block(&mut self, out: &mut Vec<u8>);
}

/// The dynamic table size both sides start with (RFC 7541 4.2), and the most we allow.
pub const TABLE_SIZE: usize = 4096;

pub struct Loona {
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    table_update: Option<usize>,
}

impl Hpack for Loona {
    const NAME: &'static str = "loona-hpack";

    fn create() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Loona {
            decoder,
            encoder: loona_hpack::Encoder::new(),
            table_update: None,
        }
    }

    fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), ()> {
        self.decoder
            .decode_with_cb(block, |name, value| f(&name, &value))
            .map_err(|_| ())
    }

    fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        // io::Write on a Vec cannot fail.
        let _ = self.encoder.encode_header_into((name, value), out);
    }

    fn limit_encoder_table(&mut self, size: usize) {
        let size = size.min(TABLE_SIZE);
        self.encoder.set_max_table_size(size);
        self.table_update = Some(size);
    }

    fn start_block(&mut self, out: &mut Vec<u8>) {
        if let Some(size) = self.table_update.take() {
            let _ = loona_hpack::encoder::encode_integer_into(size, 5, 0x20, out);
        }
    }
}

pub struct Httlib {
    decoder: httlib_hpack::Decoder<'static>,
    encoder: httlib_hpack::Encoder<'static>,
    /// The block being decoded (the decoder consumes a `Vec`) and the fields it returned.
    scratch: Vec<u8>,
    fields: Vec<(Vec<u8>, Vec<u8>, u8)>,
    table_update: Option<u32>,
}

/// Value Huffman-coded when shorter, field indexed, the table searched first (as h2 does).
const HTTLIB_FLAGS: u8 = 0x2 | 0x4 | 0x10;

impl Hpack for Httlib {
    const NAME: &'static str = "httlib-hpack";

    fn create() -> Self {
        Httlib {
            decoder: httlib_hpack::Decoder::default(),
            encoder: httlib_hpack::Encoder::default(),
            scratch: Vec::new(),
            fields: Vec::new(),
            table_update: None,
        }
    }

    fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), ()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(block);
        self.fields.clear();
        self.decoder
            .decode(&mut self.scratch, &mut self.fields)
            .map_err(|_| ())?;
        for (name, value, _) in &self.fields {
            f(name, value);
        }
        Ok(())
    }

    fn encode(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let _ = self
            .encoder
            .encode((name.to_vec(), value.to_vec(), HTTLIB_FLAGS), out);
    }

    fn limit_encoder_table(&mut self, size: usize) {
        self.table_update = Some(u32::try_from(size.min(TABLE_SIZE)).unwrap_or(0));
    }

    fn start_block(&mut self, out: &mut Vec<u8>) {
        if let Some(size) = self.table_update.take() {
            let _ = self.encoder.update_max_dynamic_size(size, out);
        }
    }
}
