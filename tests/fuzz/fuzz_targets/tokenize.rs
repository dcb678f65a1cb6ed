//! The text tower's input path: any text (any UTF-8, any length) gives
//! exactly the context length of ids and mask. The tokenizer is the test
//! model's (`$MEDEMBED_TEST_MODEL/tokenizer.json`, MedImageInsight's CLIP
//! BPE), or `$MEDEMBED_FUZZ_TOKENIZER`.
#![no_main]

use std::sync::OnceLock;

use medembed_worker::tokenize::{TextTokenizer, Tokens};

fn tokenizer() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = std::env::var_os("MEDEMBED_FUZZ_TOKENIZER")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("MEDEMBED_TEST_MODEL")
                    .map(|d| std::path::PathBuf::from(d).join("tokenizer.json"))
            })
            .expect("set MEDEMBED_TEST_MODEL (scripts/test-model.sh --exports)");
        TextTokenizer::load(&path, 77).expect("loading the tokenizer")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t = tokenizer();
    let mut out = Tokens {
        input_ids: Vec::new(),
        attention_mask: Vec::new(),
    };
    t.encode_into(text, &mut out)
        .expect("every text tokenizes (truncated to the context)");
    assert_eq!(out.input_ids.len(), t.context_length());
    assert_eq!(out.attention_mask.len(), t.context_length());
});
