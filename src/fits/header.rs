//! FITS header cards, in file order, with typed values.
//!
//! [`FitsReader`](super::FitsReader) fills a [`Header`] with every card of the image HDU (for
//! tile-compressed images: the header of the image, see [`Header::uncompressed`]), long
//! strings continued on CONTINUE cards joined into one value and the blank cards that pad the
//! end of a header dropped. [`write_image`](super::write_image) writes its non-structural
//! cards back in order. Commentary cards (HISTORY, COMMENT and blank-keyword cards) have an
//! [`CardValue::Undefined`] value and their text in `comment`.

use serde_json::{Map, Value};

use super::ffi;

/// A card value as cfitsio types it.
#[derive(Debug, Clone, PartialEq)]
pub enum CardValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A keyword with no value (`KEY =` or commentary cards).
    Undefined,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    pub key: String,
    pub value: CardValue,
    pub comment: Option<String>,
}

/// The text a HISTORY or COMMENT card holds (columns 9–80).
const COMMENTARY_TEXT_LEN: usize = 72;

impl Card {
    /// HISTORY, COMMENT and blank-keyword cards: no value, their text in `comment`.
    pub fn is_commentary(&self) -> bool {
        is_commentary_key(&self.key)
    }

    /// Parses one 80-character header record (CONTINUE cards are joined by
    /// [`Header::from_records`]).
    fn parse(record: &str) -> Card {
        let key = record_key(record);
        let (value, comment) = ffi::parse_card(record);
        let comment = (!comment.is_empty()).then_some(comment);
        let value = if is_commentary_key(&key) {
            CardValue::Undefined
        } else {
            typed_value(&value)
        };
        Card {
            key,
            value,
            comment,
        }
    }
}

/// `text` cut into pieces that fit a commentary card; one empty piece for empty text.
pub(super) fn commentary_pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars
        .chunks(COMMENTARY_TEXT_LEN)
        .map(String::from_iter)
        .collect()
}

fn is_commentary_key(key: &str) -> bool {
    key.is_empty() || key.eq_ignore_ascii_case("HISTORY") || key.eq_ignore_ascii_case("COMMENT")
}

/// The keyword of a record: columns 1–8, or the name after `HIERARCH` up to `=`.
fn record_key(record: &str) -> String {
    if let Some(rest) = record.strip_prefix("HIERARCH ")
        && let Some(end) = rest.find('=')
    {
        return rest[..end].trim().to_string();
    }
    let name: String = record.chars().take(8).collect();
    let name = name.split('=').next().unwrap_or_default();
    name.trim().to_string()
}

/// Types a value string as cfitsio's `ffpsvc` returns it (quoted strings keep their quotes).
fn typed_value(value: &str) -> CardValue {
    let value = value.trim();
    if value.is_empty() {
        CardValue::Undefined
    } else if let Some(quoted) = value.strip_prefix('\'') {
        let inner = quoted.strip_suffix('\'').unwrap_or(quoted);
        CardValue::Str(inner.replace("''", "'").trim_end().to_string())
    } else if value == "T" {
        CardValue::Bool(true)
    } else if value == "F" {
        CardValue::Bool(false)
    } else if let Ok(int) = value.parse::<i64>() {
        CardValue::Int(int)
    } else if let Ok(float) = value.replace(['D', 'd'], "E").parse::<f64>() {
        // Also integers too large for i64.
        CardValue::Float(float)
    } else {
        // Complex values "(re, im)" and malformed ones: kept as text.
        CardValue::Str(value.to_string())
    }
}

/// Keywords describing the data layout rather than the data: read, but never written back by
/// `write_image`, which writes its own. Extension identity (EXTNAME, EXTVER, EXTLEVEL,
/// INHERIT) is dropped too, as the output is a new primary HDU.
pub(super) fn is_structural(key: &str) -> bool {
    const LAYOUT: &[&str] = &[
        "SIMPLE", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "XTENSION", "GROUPS", "BZERO",
        "BSCALE", "BLANK", "CHECKSUM", "DATASUM", "END", "EXTNAME", "EXTVER", "EXTLEVEL",
        "INHERIT",
    ];
    const TILE_COMPRESSION: &[&str] = &[
        "ZIMAGE", "ZCMPTYPE", "ZBITPIX", "ZNAXIS", "ZSIMPLE", "ZTENSION", "ZEXTEND", "ZBLOCKED",
        "ZPCOUNT", "ZGCOUNT", "ZHECKSUM", "ZDATASUM", "ZQUANTIZ", "ZDITHER0", "ZBLANK", "ZSCALE",
        "ZZERO", "ZMASKCMP", "ZTHEAP",
    ];
    let key = key.to_ascii_uppercase();
    LAYOUT.contains(&key.as_str())
        || TILE_COMPRESSION.contains(&key.as_str())
        || is_indexed(&key, &["NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL"])
}

/// Whether `key` is one of `prefixes` followed by a number (`NAXIS1`, `TTYPE12`).
fn is_indexed(key: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|prefix| {
        key.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The cards of one HDU, in order. Structural keywords (SIMPLE, BITPIX, NAXISn, EXTEND,
/// PCOUNT, GCOUNT, XTENSION, BZERO, BSCALE, BLANK, CHECKSUM, DATASUM and the ZIMAGE/Z* cards of
/// tile compression) are kept when read and never written back by `write_image`, nor are
/// EXTNAME, EXTVER, EXTLEVEL and INHERIT (the output is a new primary HDU). The header of a
/// tile-compressed image is that of the image: the binary table's own cards and the
/// compression parameters are left out, the saved image cards (ZBITPIX, ZNAXISn, …) renamed
/// back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    cards: Vec<Card>,
}

impl Header {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a header from 80-character records, joining long strings continued on
    /// CONTINUE cards (`'text&'` then `CONTINUE  'more'`).
    pub(super) fn from_records(records: &[String]) -> Self {
        let mut cards: Vec<Card> = Vec::with_capacity(records.len());
        for record in records {
            if let Some(rest) = record.strip_prefix("CONTINUE  ")
                && let Some(Card {
                    value: CardValue::Str(text),
                    comment,
                    ..
                }) = cards.last_mut()
                && text.ends_with('&')
            {
                // Parse the continuation as the value of a dummy keyword.
                let piece = Card::parse(&format!("CONTINUX= {rest}"));
                if let CardValue::Str(more) = piece.value {
                    text.pop();
                    text.push_str(&more);
                    if let Some(more_comment) = piece.comment {
                        comment.get_or_insert_default().push_str(&more_comment);
                    }
                    continue;
                }
            }
            cards.push(Card::parse(record));
        }
        while cards
            .last()
            .is_some_and(|c| c.key.is_empty() && c.comment.is_none())
        {
            cards.pop();
        }
        Header { cards }
    }

    /// The header of the image a tile-compressed HDU holds, from the header of its binary
    /// table, following the tile-compression convention as cfitsio applies it: the table's
    /// own keywords, its checksums and the compression parameters (ZIMAGE, ZCMPTYPE, ZTILEn,
    /// ZNAMEn, ZVALn, ZQUANTIZ, ZDITHER0, ZBLANK, ZMASKCMP, and EXTNAME = 'COMPRESSED_IMAGE')
    /// are dropped, and the saved copies of the image's own keywords (ZSIMPLE, ZTENSION,
    /// ZBITPIX, ZNAXIS, ZNAXISn, ZEXTEND, ZBLOCKED, ZPCOUNT, ZGCOUNT, ZHECKSUM, ZDATASUM) get
    /// their names back.
    pub(super) fn uncompressed(self) -> Header {
        const DROPPED: &[&str] = &[
            "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "THEAP", "CHECKSUM",
            "DATASUM", "ZIMAGE", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "ZBLANK", "ZMASKCMP",
        ];
        const DROPPED_INDEXED: &[&str] = &["NAXIS", "TTYPE", "TFORM", "ZTILE", "ZNAME", "ZVAL"];
        const RENAMED: &[(&str, &str)] = &[
            ("ZSIMPLE", "SIMPLE"),
            ("ZTENSION", "XTENSION"),
            ("ZBITPIX", "BITPIX"),
            ("ZNAXIS", "NAXIS"),
            ("ZEXTEND", "EXTEND"),
            ("ZBLOCKED", "BLOCKED"),
            ("ZPCOUNT", "PCOUNT"),
            ("ZGCOUNT", "GCOUNT"),
            ("ZHECKSUM", "CHECKSUM"),
            ("ZDATASUM", "DATASUM"),
        ];
        let cards = self
            .cards
            .into_iter()
            .filter(|card| {
                let key = card.key.as_str();
                let table_name =
                    key == "EXTNAME" && card.value == CardValue::Str("COMPRESSED_IMAGE".into());
                !(DROPPED.contains(&key) || is_indexed(key, DROPPED_INDEXED) || table_name)
            })
            .map(|mut card| {
                if let Some((_, name)) = RENAMED.iter().find(|(saved, _)| *saved == card.key) {
                    card.key = name.to_string();
                } else if is_indexed(&card.key, &["ZNAXIS"]) {
                    card.key.remove(0); // ZNAXISn → NAXISn
                }
                card
            })
            .collect();
        Header { cards }
    }

    pub fn cards(&self) -> &[Card] {
        &self.cards
    }

    /// The first card with this key (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&CardValue> {
        self.cards
            .iter()
            .find(|c| c.key.eq_ignore_ascii_case(key))
            .map(|c| &c.value)
    }

    /// Numeric value (Int or Float, or a string that parses as a number).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            CardValue::Int(i) => Some(*i as f64),
            CardValue::Float(f) => Some(*f),
            CardValue::Str(s) => s.trim().parse().ok(),
            CardValue::Bool(_) | CardValue::Undefined => None,
        }
    }

    /// Integer value (Int, a Float with no fractional part, or a string that parses as an
    /// integer).
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            CardValue::Int(i) => Some(*i),
            CardValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(*f as i64),
            CardValue::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// String value, trimmed.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            CardValue::Str(s) => Some(s.trim()),
            _ => None,
        }
    }

    /// Sets (replaces the first, or appends) a valued card. The key is stored in upper case;
    /// replacing with `comment` None keeps the card's comment.
    pub fn set(&mut self, key: &str, value: CardValue, comment: Option<&str>) {
        let key = key.trim().to_ascii_uppercase();
        let comment = comment.map(str::to_string);
        match self
            .cards
            .iter_mut()
            .find(|c| c.key.eq_ignore_ascii_case(&key))
        {
            Some(card) => {
                card.value = value;
                if comment.is_some() {
                    card.comment = comment;
                }
            }
            None => self.cards.push(Card {
                key,
                value,
                comment,
            }),
        }
    }

    /// Removes every card with this key (case-insensitive).
    pub fn remove(&mut self, key: &str) {
        self.cards.retain(|c| !c.key.eq_ignore_ascii_case(key));
    }

    /// Appends a HISTORY card (long text is split over several cards).
    pub fn push_history(&mut self, text: &str) {
        self.push_commentary("HISTORY", text);
    }

    /// Appends a COMMENT card (long text is split over several cards).
    pub fn push_comment(&mut self, text: &str) {
        self.push_commentary("COMMENT", text);
    }

    fn push_commentary(&mut self, key: &str, text: &str) {
        self.cards
            .extend(commentary_pieces(text).into_iter().map(|piece| Card {
                key: key.to_string(),
                value: CardValue::Undefined,
                comment: Some(piece),
            }));
    }

    /// `{key: value}` for `fits.info`: strings, numbers, booleans, null; repeated keys
    /// (COMMENT, HISTORY) become lists of strings. Other repeated keys keep their first value
    /// (as [`Header::get`]); blank-keyword cards are left out.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for card in &self.cards {
            if card.key.is_empty() {
                continue;
            }
            if card.is_commentary() {
                let text = Value::String(card.comment.clone().unwrap_or_default());
                let list = map
                    .entry(card.key.to_ascii_uppercase())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = list {
                    items.push(text);
                }
            } else if !map.contains_key(&card.key) {
                let value = match &card.value {
                    CardValue::Bool(b) => Value::Bool(*b),
                    CardValue::Int(i) => Value::from(*i),
                    // Not-a-number and infinities have no JSON form: null.
                    CardValue::Float(f) => {
                        serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
                    }
                    CardValue::Str(s) => Value::String(s.clone()),
                    CardValue::Undefined => Value::Null,
                };
                map.insert(card.key.clone(), value);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(cards: &[&str]) -> Vec<String> {
        cards.iter().map(|c| format!("{c:<80}")).collect()
    }

    #[test]
    fn parses_typed_values_and_comments() {
        let h = Header::from_records(&records(&[
            "SIMPLE  =                    T / conforms",
            "BITPIX  =                   16",
            "EXPTIME =                 10.0 / [s]",
            "GAIN    =                  80",
            "BIG     =  1.5D+03",
            "HUGE    = 123456789012345678901234567890",
            "OBJECT  = 'M 94 ''core'''   / target",
            "PADDED  = '  lead  '",
            "CPLX    = (1.0, 2.0)",
            "FLAG    =                    F",
            "NOVALUE =                      / undefined",
            "HISTORY   dark subtracted",
            "COMMENT second comment",
            "        blank keyword text",
            "HIERARCH ESO DET DIT = 1.5 / hierarch",
            "DATE-OBS='2024-01-01T00:00:00'",
        ]));
        assert_eq!(h.get("simple"), Some(&CardValue::Bool(true)));
        assert_eq!(h.get_i64("BITPIX"), Some(16));
        assert_eq!(h.get("EXPTIME"), Some(&CardValue::Float(10.0)));
        assert_eq!(h.get_i64("EXPTIME"), Some(10));
        assert_eq!(h.get_f64("GAIN"), Some(80.0));
        assert_eq!(h.get("BIG"), Some(&CardValue::Float(1500.0)));
        assert_eq!(
            h.get("HUGE"),
            Some(&CardValue::Float(1.2345678901234568e29))
        );
        assert_eq!(h.get_str("OBJECT"), Some("M 94 'core'"));
        assert_eq!(h.get("PADDED"), Some(&CardValue::Str("  lead".into())));
        assert_eq!(h.get_str("PADDED"), Some("lead"));
        assert_eq!(h.get("CPLX"), Some(&CardValue::Str("(1.0, 2.0)".into())));
        assert_eq!(h.get("FLAG"), Some(&CardValue::Bool(false)));
        assert_eq!(h.get("NOVALUE"), Some(&CardValue::Undefined));
        assert_eq!(h.get("ESO DET DIT"), Some(&CardValue::Float(1.5)));
        assert_eq!(h.get_str("DATE-OBS"), Some("2024-01-01T00:00:00"));
        assert_eq!(h.get("MISSING"), None);

        let exptime = &h.cards()[2];
        assert_eq!(exptime.comment.as_deref(), Some("[s]"));
        let history = &h.cards()[11];
        assert_eq!(history.key, "HISTORY");
        assert!(history.is_commentary());
        assert_eq!(history.value, CardValue::Undefined);
        assert_eq!(history.comment.as_deref(), Some("  dark subtracted"));
        assert_eq!(h.cards()[13].key, "");
        assert_eq!(h.cards()[13].comment.as_deref(), Some("blank keyword text"));
    }

    #[test]
    fn joins_continued_long_strings() {
        let h = Header::from_records(&records(&[
            "LONG    = 'first part &'  / c1",
            "CONTINUE  'second part&'",
            "CONTINUE  ' end'  / c2",
            "AMP     = 'ends with &'",
            "NEXT    = 1",
        ]));
        assert_eq!(h.cards().len(), 3);
        assert_eq!(h.get_str("LONG"), Some("first part second part end"));
        assert_eq!(h.cards()[0].comment.as_deref(), Some("c1c2"));
        // A trailing '&' without a CONTINUE card is part of the value.
        assert_eq!(h.get_str("AMP"), Some("ends with &"));
    }

    #[test]
    fn compressed_headers_become_image_headers() {
        let table = Header::from_records(&records(&[
            "XTENSION= 'BINTABLE'",
            "BITPIX  =                    8",
            "NAXIS   =                    2",
            "NAXIS1  =                    8",
            "NAXIS2  =                  300",
            "PCOUNT  =                66896",
            "GCOUNT  =                    1",
            "TFIELDS =                    1",
            "TTYPE1  = 'COMPRESSED_DATA'",
            "TFORM1  = '1PB     '",
            "ZIMAGE  =                    T",
            "ZTENSION= 'IMAGE   '",
            "ZBITPIX =                   16 / data type of original image",
            "ZNAXIS  =                    2",
            "ZNAXIS1 =                  440",
            "ZNAXIS2 =                  300",
            "ZTILE1  =                  440",
            "ZTILE2  =                    1",
            "ZCMPTYPE= 'RICE_1  '",
            "ZNAME1  = 'BLOCKSIZE'",
            "ZVAL1   =                   32",
            "ZQUANTIZ= 'SUBTRACTIVE_DITHER_1'",
            "EXTNAME = 'COMPRESSED_IMAGE'",
            "OBJECT  = 'NGC 1316'",
            "ZDATASUM= '12345'",
            "ZHECKSUM= 'image checksum'",
            "CHECKSUM= 'table checksum'",
            "BZERO   =                32768",
            "EXTNAME = 'ccd00'",
            "",
            "",
        ]));
        let image = table.uncompressed();
        let keys: Vec<&str> = image.cards().iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "OBJECT", "DATASUM", "CHECKSUM",
                "BZERO", "EXTNAME"
            ]
        );
        assert_eq!(image.get_str("CHECKSUM"), Some("image checksum"));
        assert_eq!(image.get_str("XTENSION"), Some("IMAGE"));
        assert_eq!(image.get_i64("BITPIX"), Some(16));
        assert_eq!(
            image.cards()[1].comment.as_deref(),
            Some("data type of original image")
        );
        assert_eq!(image.get_i64("NAXIS1"), Some(440));
        assert_eq!(image.get_str("EXTNAME"), Some("ccd00"));
    }

    #[test]
    fn set_replaces_in_place_and_keeps_comment() {
        let mut h = Header::new();
        h.set("exptime", CardValue::Float(10.0), Some("[s]"));
        h.set("GAIN", CardValue::Int(80), None);
        h.set("ExpTime", CardValue::Float(20.0), None);
        assert_eq!(h.cards().len(), 2);
        assert_eq!(h.cards()[0].key, "EXPTIME");
        assert_eq!(h.cards()[0].value, CardValue::Float(20.0));
        assert_eq!(h.cards()[0].comment.as_deref(), Some("[s]"));
        h.set("EXPTIME", CardValue::Float(30.0), Some("new"));
        assert_eq!(h.cards()[0].comment.as_deref(), Some("new"));
        h.remove("exptime");
        assert_eq!(h.get("EXPTIME"), None);
        assert_eq!(h.cards().len(), 1);
    }

    #[test]
    fn long_history_is_split() {
        let mut h = Header::new();
        let text: String = (0..150)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        h.push_history(&text);
        h.push_comment("");
        let pieces: Vec<&str> = h
            .cards()
            .iter()
            .map(|c| c.comment.as_deref().unwrap())
            .collect();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0].len(), 72);
        assert_eq!(pieces[1].len(), 72);
        assert_eq!(pieces[..3].concat(), text);
        assert_eq!(pieces[3], "");
        assert!(h.cards().iter().all(Card::is_commentary));
    }

    #[test]
    fn json_has_typed_values_and_commentary_lists() {
        let mut h = Header::new();
        h.set("NAXIS", CardValue::Int(2), None);
        h.set("EXPTIME", CardValue::Float(10.5), None);
        h.set("BAD", CardValue::Float(f64::NAN), None);
        h.set("OBJECT", CardValue::Str("M94".into()), None);
        h.set("SIMPLE", CardValue::Bool(true), None);
        h.set("NOTHING", CardValue::Undefined, None);
        h.push_history("one");
        h.push_comment("c");
        h.push_history("two");
        let json = Value::Object(h.to_json());
        assert_eq!(
            json,
            serde_json::json!({
                "NAXIS": 2, "EXPTIME": 10.5, "BAD": null, "OBJECT": "M94", "SIMPLE": true,
                "NOTHING": null, "HISTORY": ["one", "two"], "COMMENT": ["c"]
            })
        );
        // Insertion order is kept.
        let keys: Vec<String> = h.to_json().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "NAXIS", "EXPTIME", "BAD", "OBJECT", "SIMPLE", "NOTHING", "HISTORY", "COMMENT"
            ]
        );
    }

    #[test]
    fn structural_keys() {
        for key in [
            "SIMPLE", "bitpix", "NAXIS", "NAXIS3", "BZERO", "ZTILE1", "ZNAXIS2", "ZCMPTYPE",
            "EXTNAME",
        ] {
            assert!(is_structural(key), "{key}");
        }
        for key in ["NAXISX", "EXPTIME", "ZD", "ZENITH", "HISTORY", "ZTILE"] {
            assert!(!is_structural(key), "{key}");
        }
    }
}
