//! One scoring request, from a validated [`ScoreRequest`] to its
//! [`Embeddings`] (one entry per row; the server gives them their JSON shape).
//!
//! Images go to the decode pool and the image batcher, texts are tokenized and
//! go to the text batcher; the handler awaits every item's answer until the
//! request's deadline. The first failing item fails the request (400 naming its
//! row for a bad image); dropping the other answers' receivers tells the
//! batchers not to spend inference on them.

use std::sync::Arc;
use std::time::Instant;

use futures::future::try_join_all;
use medembed_api::{Embeddings, ErrorCode, RowEmbeddings, ScoreRequest};
use tokio::sync::oneshot;

use crate::batch::{Admission, ImageJob, ItemError, JobMeta, Permit, Pipeline, TextJob};
use crate::error::ApiError;
use crate::tokenize::TextTokenizer;

/// Texts tokenized on the async thread; larger batches go to a blocking thread.
const INLINE_TOKENIZE: usize = 16;

/// One tokenized text: its row, token ids and attention mask.
type Encoded = (usize, Vec<i64>, Vec<i64>);

/// What scoring needs from the loaded model.
#[derive(Debug)]
pub struct Scorer {
    /// The batching pipeline.
    pub pipeline: Pipeline,
    /// The tokenizer.
    pub tokenizer: Arc<TextTokenizer>,
    /// The raw logit scale returned as `scaling_factor`.
    pub logit_scale: f32,
}

fn item_error(row: usize, e: ItemError, budget_ms: u64) -> ApiError {
    match e {
        ItemError::Decode(d) => ApiError::Invalid {
            code: ErrorCode::InvalidImage,
            message: format!("row {row}: {d}"),
        },
        ItemError::Expired => ApiError::Timeout(budget_ms),
        ItemError::Failed => ApiError::Internal,
        ItemError::Inference(msg) => {
            tracing::error!(error = %msg, "inference failed");
            ApiError::Internal
        }
    }
}

impl Scorer {
    /// Scores one request; `deadline` bounds the whole computation.
    pub async fn score(
        &self,
        req: ScoreRequest,
        deadline: Instant,
        budget_ms: u64,
    ) -> Result<Embeddings, ApiError> {
        let n_images = req.image_count();
        let n_texts = req.text_count();
        let image_permit = admit(&self.pipeline.image_admission, n_images, "image queue full")?;
        let text_permit = admit(&self.pipeline.text_admission, n_texts, "text queue full")?;
        let admitted = Instant::now();
        let meta = |reply| JobMeta {
            admitted,
            deadline,
            reply,
        };

        let n_rows = req.rows.len();
        let mut texts = Vec::with_capacity(n_texts);
        let mut image_waits = Vec::with_capacity(n_images);
        for (row, r) in req.rows.into_iter().enumerate() {
            if let Some(base64) = r.image {
                let (tx, rx) = oneshot::channel();
                self.pipeline.submit_image(ImageJob {
                    base64,
                    meta: meta(tx),
                });
                image_waits.push(wait(row, rx, budget_ms));
            }
            if let Some(t) = r.text {
                texts.push((row, t));
            }
        }

        let mut text_waits = Vec::with_capacity(n_texts);
        if !texts.is_empty() {
            let tokenizer = self.tokenizer.clone();
            let encode = move || -> Result<Vec<Encoded>, ApiError> {
                let ctx = tokenizer.context_length();
                texts
                    .into_iter()
                    .map(|(row, t)| {
                        let tok = tokenizer.encode_batch([t.as_str()]).map_err(|_| {
                            ApiError::Invalid {
                                code: ErrorCode::InvalidText,
                                message: format!("row {row}: text could not be tokenized"),
                            }
                        })?;
                        debug_assert_eq!(tok.input_ids.len(), ctx);
                        Ok((row, tok.input_ids, tok.attention_mask))
                    })
                    .collect()
            };
            let encoded = if n_texts <= INLINE_TOKENIZE {
                encode()?
            } else {
                tokio::task::spawn_blocking(encode)
                    .await
                    .map_err(|_| ApiError::Internal)??
            };
            for (row, ids, mask) in encoded {
                let (tx, rx) = oneshot::channel();
                self.pipeline.submit_text(TextJob {
                    ids,
                    mask,
                    meta: meta(tx),
                });
                text_waits.push(wait(row, rx, budget_ms));
            }
        }

        let all = async { futures::try_join!(try_join_all(image_waits), try_join_all(text_waits)) };
        let (images, texts) = tokio::time::timeout_at(deadline.into(), all)
            .await
            .map_err(|_| ApiError::Timeout(budget_ms))??;
        drop((image_permit, text_permit));

        let mut rows = vec![RowEmbeddings::default(); n_rows];
        for (row, v) in images {
            rows[row].image = Some(v);
        }
        for (row, v) in texts {
            rows[row].text = Some(v);
        }
        Ok(Embeddings {
            rows,
            scaling_factor: req.get_scaling_factor.then_some(self.logit_scale),
        })
    }
}

/// Awaits one item's vector and pairs it with its row.
async fn wait(
    row: usize,
    rx: oneshot::Receiver<Result<Vec<f32>, ItemError>>,
    budget_ms: u64,
) -> Result<(usize, Vec<f32>), ApiError> {
    match rx.await {
        Ok(Ok(v)) => Ok((row, v)),
        Ok(Err(e)) => Err(item_error(row, e, budget_ms)),
        // The pipeline dropped the job: it is shutting down.
        Err(_) => Err(ApiError::Unavailable("worker is shutting down")),
    }
}

/// Room for `n` items in a queue (none needed for none), or 429 with `full`.
fn admit(queue: &Admission, n: usize, full: &'static str) -> Result<Option<Permit>, ApiError> {
    if n == 0 {
        return Ok(None);
    }
    queue
        .try_acquire(n)
        .map(Some)
        .ok_or(ApiError::Overloaded(full))
}
