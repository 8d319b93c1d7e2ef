//! Array names to data file names that cannot escape the directory or collide (FORMAT.md 3).

use sha2::{Digest, Sha256};

/// `prefix-hex16`: up to 32 lower-cased ASCII alphanumerics or `_` of the name, then the first
/// 16 hex digits of the SHA-256 of its UTF-8 bytes.
pub fn stem(name: &str) -> String {
    let prefix: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

pub fn data_file(name: &str, file_id: u64) -> String {
    format!("{}.{file_id}.npkd", stem(name))
}

/// Whether `file` has the shape of a data file name (checked before a journal writes to it).
pub fn is_data_file(file: &str) -> bool {
    let Some(body) = file.strip_suffix(".npkd") else {
        return false;
    };
    let Some((stem, id)) = body.rsplit_once('.') else {
        return false;
    };
    let Some((prefix, hex)) = stem.rsplit_once('-') else {
        return false;
    };
    // The id in canonical decimal, as `data_file` writes it: no leading zeros.
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'))
        && hex.len() == 16
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_plain_files() {
        for name in [
            "../x",
            "a/b",
            "a\\b",
            "x\0y",
            "..",
            "ünï",
            &"n".repeat(10_000),
        ] {
            let f = data_file(name, 7);
            assert!(is_data_file(&f), "{f}");
            assert!(f.len() < 80);
            assert!(!is_data_file(&f.replace(".7.", ".07.")));
            assert!(!f.contains('/') && !f.contains('\\') && !f.contains('\0'));
        }
    }

    #[test]
    fn case_differences_give_different_files() {
        assert_ne!(stem("A"), stem("a"));
        assert_eq!(stem("Emb_1"), format!("emb_1-{}", &stem("Emb_1")[6..]));
    }
}
