//! The BERT encoder of all-MiniLM-L6-v2 over packed inputs: a batch's tokens laid end to end,
//! with no padding, so every dense layer is one matrix product over all of them and attention
//! runs per input. The arithmetic is a padded, masked forward's (candle-transformers'
//! `BertModel`, which loads the same weights) without its work on padding, its attention mask
//! and its generic softmax: on a CPU those cost more than the matrix products.
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

/// One input's word-piece ids and token type ids (the same length).
pub struct Input<'a> {
    pub ids: &'a [u32],
    pub type_ids: &'a [u32],
}

pub struct Bert {
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    device: Device,
}

struct Layer {
    /// Query, key and value in one product; the query part pre-scaled by 1/√(head size).
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    output_norm: LayerNorm,
}

impl Bert {
    /// Loads the weights `BertModel::load` reads, under `embeddings.` and `encoder.` (or the
    /// same under the config's `model_type`, as some exports name them).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Bert> {
        if config.hidden_act != HiddenAct::Gelu {
            candle_core::bail!("hidden_act {:?}: only gelu is supported", config.hidden_act);
        }
        match Bert::load_under(vb.clone(), config) {
            Ok(bert) => Ok(bert),
            Err(error) => match &config.model_type {
                Some(prefix) => Bert::load_under(vb.pp(prefix), config).map_err(|_| error),
                None => Err(error),
            },
        }
    }

    fn load_under(vb: VarBuilder, config: &Config) -> Result<Bert> {
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!("hidden_size {hidden} is not a multiple of {heads} heads");
        }
        let eps = config.layer_norm_eps;
        let e = vb.pp("embeddings");
        let words = embedding(config.vocab_size, hidden, e.pp("word_embeddings"))?;
        let positions = embedding(
            config.max_position_embeddings,
            hidden,
            e.pp("position_embeddings"),
        )?;
        let types = embedding(
            config.type_vocab_size,
            hidden,
            e.pp("token_type_embeddings"),
        )?;
        let embedding_norm = layer_norm(hidden, eps, e.pp("LayerNorm"))?;
        let scale = 1.0 / ((hidden / heads) as f64).sqrt();
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                let part = |name: &str| -> Result<(Tensor, Tensor)> {
                    let p = a.pp("self").pp(name);
                    Ok((p.get((hidden, hidden), "weight")?, p.get(hidden, "bias")?))
                };
                let (qw, qb) = part("query")?;
                let (kw, kb) = part("key")?;
                let (vw, vb_) = part("value")?;
                let qkv = Linear::new(
                    Tensor::cat(&[(qw * scale)?, kw, vw], 0)?,
                    Some(Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?),
                );
                let dense = |p: VarBuilder, inputs: usize, outputs: usize| -> Result<Linear> {
                    let p = p.pp("dense");
                    Ok(Linear::new(
                        p.get((outputs, inputs), "weight")?,
                        Some(p.get(outputs, "bias")?),
                    ))
                };
                Ok(Layer {
                    qkv,
                    attention_out: dense(a.pp("output"), hidden, hidden)?,
                    attention_norm: layer_norm(hidden, eps, a.pp("output").pp("LayerNorm"))?,
                    up: dense(l.pp("intermediate"), hidden, config.intermediate_size)?,
                    down: dense(l.pp("output"), config.intermediate_size, hidden)?,
                    output_norm: layer_norm(hidden, eps, l.pp("output").pp("LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            words,
            positions,
            types,
            embedding_norm,
            layers,
            heads,
            hidden,
            device: vb.device().clone(),
        })
    }

    /// The last hidden states of every input's tokens: (total tokens, hidden), input by input.
    pub fn forward(&self, inputs: &[Input]) -> Result<Tensor> {
        let flat = |f: &dyn Fn(&Input) -> Vec<u32>| -> Result<Tensor> {
            Tensor::new(
                inputs.iter().flat_map(f).collect::<Vec<u32>>(),
                &self.device,
            )
        };
        let ids = flat(&|i| i.ids.to_vec())?;
        let type_ids = flat(&|i| i.type_ids.to_vec())?;
        let position_ids = flat(&|i| (0..i.ids.len() as u32).collect())?;
        let mut x = (self.words.forward(&ids)? + self.types.forward(&type_ids)?)?;
        x = (x + self.positions.forward(&position_ids)?)?;
        x = self.embedding_norm.forward(&x)?;
        let spans = spans(inputs);
        for layer in &self.layers {
            let context = self.attention(&layer.qkv.forward(&x)?, &spans)?;
            let attended = (layer.attention_out.forward(&context)? + x)?;
            x = layer.attention_norm.forward(&attended)?;
            let up = layer.up.forward(&x)?.gelu_erf()?;
            x = layer
                .output_norm
                .forward(&(layer.down.forward(&up)? + x)?)?;
        }
        Ok(x)
    }

    /// Self-attention of each input over its own tokens: (total tokens, 3 × hidden) of
    /// queries, keys and values → (total tokens, hidden).
    fn attention(&self, qkv: &Tensor, spans: &[(usize, usize)]) -> Result<Tensor> {
        let (hidden, heads) = (self.hidden, self.heads);
        let size = hidden / heads;
        let contexts = spans
            .iter()
            .map(|&(start, len)| {
                let rows = qkv.narrow(0, start, len)?;
                // (len, hidden) → (heads, len, head size)
                let split = |part: usize| -> Result<Tensor> {
                    rows.narrow(1, part * hidden, hidden)?
                        .contiguous()?
                        .reshape((len, heads, size))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let (q, k, v) = (split(0)?, split(1)?, split(2)?);
                let probabilities = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
                probabilities
                    .matmul(&v)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((len, hidden))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&contexts, 0)
    }
}

/// Each input's first row and length in the packed tensor.
pub fn spans(inputs: &[Input]) -> Vec<(usize, usize)> {
    let mut start = 0;
    inputs
        .iter()
        .map(|i| {
            let span = (start, i.ids.len());
            start += i.ids.len();
            span
        })
        .collect()
}
