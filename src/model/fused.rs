//! A fused CPU forward pass of the LSTM autoencoder, for scoring.
//!
//! libtorch runs the autoencoder as a chain of small operators, each with its own
//! dispatch and temporary tensors: about 150 µs for one window and 5.6 µs per window
//! at batch 512 on the 2-core development machine (`cargo bench --bench stages`,
//! group `inference_libtorch_1thread`). This pass computes the same equations
//! (PyTorch's `nn.LSTM` gates i, f, g, o; zero initial states; the code repeated as
//! the decoder input) in one loop nest:
//!
//! - windows are scored in tiles of [`LANES`], one window per SIMD lane, so every
//!   product and activation works on whole vectors whatever the layer sizes;
//! - the decoder's input product is computed once per window, because its input, the
//!   code, is the same at every step;
//! - only the per-feature squared error leaves the loop; no reconstruction is stored.
//!
//! On x86-64 with AVX2 and FMA (checked at run time) the loop is compiled for those
//! instructions; elsewhere it runs the same code without them. The tests check that
//! results match libtorch within 1e-4 relative; they differ at all because the
//! exponential is a polynomial approximation, as in libtorch's vectorised kernels.

use std::collections::HashMap;

use tch::{nn, Kind, Tensor};

use super::autoencoder::Architecture;

/// Windows per tile, one per `f32` lane: two AVX2 registers per value. Measured on
/// the development machine (AMD EPYC, AVX2 code), 16 lanes with blocks of 4 gates
/// beat 8 × 8, 16 × 8, 24 × 4 and 32 × 2 by 8 % or more at batch 512.
pub const LANES: usize = 16;
type Lanes = [f32; LANES];

/// Gates computed together in the matrix-vector loop: 4 gates × 2 registers keep 8
/// independent multiply-add chains in flight.
const GATE_BLOCK: usize = 4;

/// One LSTM layer's weights, repacked for the tile loop.
#[derive(Debug, Clone)]
struct Layer {
    /// Input weights in blocks of [`GATE_BLOCK`] gates: `[block][input][gate in block]`.
    input_weights: Vec<f32>,
    /// Recurrent weights, same layout with the hidden size as inputs.
    hidden_weights: Vec<f32>,
    /// `b_ih + b_hh`, padded to whole blocks.
    bias: Vec<f32>,
}

/// The autoencoder's weights, copied out of libtorch; see the module docs.
#[derive(Debug, Clone)]
pub struct FusedAutoencoder {
    window: usize,
    features: usize,
    hidden: usize,
    /// `4H` rounded up to whole blocks; padded gates have zero weights.
    padded_gates: usize,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    /// Output layer, PyTorch layout `[F][H]`.
    output_weight: Vec<f32>,
    output_bias: Vec<f32>,
    simd: bool,
}

/// Scratch vectors of one tile, reused across tiles.
struct Scratch {
    /// Encoder then decoder hidden and cell states, `[layer][H]` each.
    encoder_h: Vec<Lanes>,
    encoder_c: Vec<Lanes>,
    decoder_h: Vec<Lanes>,
    decoder_c: Vec<Lanes>,
    gates: Vec<Lanes>,
    /// The decoder's first-layer gates before the recurrent product; constant over
    /// the steps of a window.
    decoder_input_gates: Vec<Lanes>,
    /// The tile's windows transposed to `[step][feature]` lanes.
    inputs: Vec<Lanes>,
    outputs: Vec<Lanes>,
    errors: Vec<Lanes>,
}

fn tensor_values(variables: &HashMap<String, Tensor>, name: &str) -> Result<Vec<f32>, String> {
    let tensor = variables
        .get(name)
        .ok_or_else(|| format!("variable {name} not found"))?;
    let flat = tensor.to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat).map_err(|e| format!("cannot read {name}: {e}"))
}

impl Layer {
    fn load(
        variables: &HashMap<String, Tensor>,
        prefix: &str,
        index: i64,
        inputs: usize,
        hidden: usize,
        padded_gates: usize,
    ) -> Result<Self, String> {
        let gates = 4 * hidden;
        let weight_ih = tensor_values(variables, &format!("{prefix}.weight_ih_l{index}"))?;
        let weight_hh = tensor_values(variables, &format!("{prefix}.weight_hh_l{index}"))?;
        let bias_ih = tensor_values(variables, &format!("{prefix}.bias_ih_l{index}"))?;
        let bias_hh = tensor_values(variables, &format!("{prefix}.bias_hh_l{index}"))?;
        if weight_ih.len() != gates * inputs
            || weight_hh.len() != gates * hidden
            || bias_ih.len() != gates
            || bias_hh.len() != gates
        {
            return Err(format!(
                "{prefix} layer {index} has weights of unexpected sizes for {inputs} inputs and hidden size {hidden}"
            ));
        }
        let mut bias = vec![0.0; padded_gates];
        for (gate, value) in bias.iter_mut().enumerate().take(gates) {
            *value = bias_ih[gate] + bias_hh[gate];
        }
        Ok(Self {
            input_weights: pack(&weight_ih, gates, inputs, padded_gates),
            hidden_weights: pack(&weight_hh, gates, hidden, padded_gates),
            bias,
        })
    }
}

/// Repacks a PyTorch `[gates][inputs]` matrix into `[block][input][gate in block]`.
fn pack(weights: &[f32], gates: usize, inputs: usize, padded_gates: usize) -> Vec<f32> {
    let mut packed = vec![0.0; padded_gates * inputs];
    for gate in 0..gates {
        let (block, within) = (gate / GATE_BLOCK, gate % GATE_BLOCK);
        for input in 0..inputs {
            packed[(block * inputs + input) * GATE_BLOCK + within] = weights[gate * inputs + input];
        }
    }
    packed
}

/// Multiply-add, fused where the compiled code may use FMA instructions.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// Fused multiply-add; only used inside functions compiled with FMA enabled, since
/// elsewhere `f32::mul_add` is a slow library call.
#[cfg(target_arch = "x86_64")]
struct Fma;

#[cfg(target_arch = "x86_64")]
impl MulAdd for Fma {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

struct Plain;

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `e^x` for `x` in about [-87, 88] (clamped outside), within about 2 ulp: Cephes'
/// `expf` range reduction and polynomial. Written without integer conversions, which
/// the compiler would not vectorise.
#[inline(always)]
fn exp<M: MulAdd>(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so n·ln 2 is subtracted without rounding error.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding 2^23 to a float in [0, 2^23) puts its integer part in the low mantissa bits.
    const SHIFTER: f32 = 8_388_608.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + 0.5).floor();
    let r = M::mul_add(-n, LN2_LOW, M::mul_add(-n, LN2_HIGH, x));
    let mut p = 1.987_569_1e-4;
    p = M::mul_add(p, r, 1.398_2e-3);
    p = M::mul_add(p, r, 8.333_452e-3);
    p = M::mul_add(p, r, 4.166_579_6e-2);
    p = M::mul_add(p, r, 1.666_666_5e-1);
    // Cephes' 5.0000001201e-1 rounds to 0.5 in f32.
    p = M::mul_add(p, r, 0.5);
    let p = M::mul_add(p, r * r, r + 1.0);
    // 2^n: the biased exponent n + 127 lies in [1, 254] after the clamp, so shifting
    // the low mantissa bits of 2^23 + n + 127 into the exponent field builds 2^n.
    let scale = f32::from_bits((n + 127.0 + SHIFTER).to_bits() << 23);
    p * scale
}

/// Applies the logistic function to every value. A plain loop over a slice, so the
/// compiler vectorises it.
#[inline(always)]
fn sigmoid_in_place<M: MulAdd>(values: &mut [f32]) {
    for value in values {
        *value = 1.0 / (1.0 + exp::<M>(-*value));
    }
}

/// Applies `tanh(x) = 1 - 2 / (1 + e^(2x))` to every value.
#[inline(always)]
fn tanh_in_place<M: MulAdd>(values: &mut [f32]) {
    for value in values {
        *value = 1.0 - 2.0 / (1.0 + exp::<M>(2.0 * *value));
    }
}

/// `gates[g] += Σ_k W[g][k] · inputs[k]` for every gate, with `W` packed by [`pack`].
#[inline(always)]
fn multiply_add<M: MulAdd>(packed: &[f32], inputs: &[Lanes], gates: &mut [Lanes]) {
    let width = inputs.len();
    for (block, gate_block) in gates.chunks_exact_mut(GATE_BLOCK).enumerate() {
        let weights = &packed[block * width * GATE_BLOCK..(block + 1) * width * GATE_BLOCK];
        let mut acc: [Lanes; GATE_BLOCK] = [[0.0; LANES]; GATE_BLOCK];
        for (gate, slot) in acc.iter_mut().zip(gate_block.iter()) {
            *gate = *slot;
        }
        for (input, column) in inputs.iter().zip(weights.chunks_exact(GATE_BLOCK)) {
            for (gate, &weight) in acc.iter_mut().zip(column) {
                for lane in 0..LANES {
                    gate[lane] = M::mul_add(weight, input[lane], gate[lane]);
                }
            }
        }
        gate_block.copy_from_slice(&acc);
    }
}

/// Applies the gate activations (i, f, o: logistic; g: tanh) and updates the cell and
/// hidden states in place.
#[inline(always)]
fn update_state<M: MulAdd>(gates: &mut [Lanes], hidden: usize, h: &mut [Lanes], c: &mut [Lanes]) {
    let width = hidden * LANES;
    let gates = gates.as_flattened_mut();
    sigmoid_in_place::<M>(&mut gates[..2 * width]);
    tanh_in_place::<M>(&mut gates[2 * width..3 * width]);
    sigmoid_in_place::<M>(&mut gates[3 * width..4 * width]);
    let (input, rest) = gates.split_at(width);
    let (forget, rest) = rest.split_at(width);
    let (cell, rest) = rest.split_at(width);
    let output = &rest[..width];

    let c = c.as_flattened_mut();
    let h = h.as_flattened_mut();
    for (((state, &f), &i), &g) in c.iter_mut().zip(forget).zip(input).zip(cell) {
        *state = M::mul_add(f, *state, i * g);
    }
    h.copy_from_slice(c);
    tanh_in_place::<M>(h);
    for (value, &o) in h.iter_mut().zip(output) {
        *value *= o;
    }
}

impl FusedAutoencoder {
    /// Copies the weights of an [`super::LstmAutoencoder`] of shape `arch` out of `vars`.
    pub fn from_vars(vars: &nn::VarStore, arch: Architecture) -> Result<Self, String> {
        let variables = vars.variables();
        let hidden = arch.hidden_size as usize;
        let features = arch.features as usize;
        let padded_gates = (4 * hidden).div_ceil(GATE_BLOCK) * GATE_BLOCK;
        let mut encoder = Vec::new();
        let mut decoder = Vec::new();
        for layer in 0..arch.num_layers {
            let inputs = if layer == 0 { features } else { hidden };
            encoder.push(Layer::load(
                &variables,
                "encoder",
                layer,
                inputs,
                hidden,
                padded_gates,
            )?);
            decoder.push(Layer::load(
                &variables,
                "decoder",
                layer,
                hidden,
                hidden,
                padded_gates,
            )?);
        }
        let output_weight = tensor_values(&variables, "output.weight")?;
        let output_bias = tensor_values(&variables, "output.bias")?;
        if output_weight.len() != features * hidden || output_bias.len() != features {
            return Err("output layer weights of unexpected sizes".into());
        }
        Ok(Self {
            window: arch.window as usize,
            features,
            hidden,
            padded_gates,
            encoder,
            decoder,
            output_weight,
            output_bias,
            simd: simd_available(),
        })
    }

    /// Returns the mean squared reconstruction error of each feature, `[count][F]`,
    /// for `count = windows.len() / (W·F)` scaled windows laid out `[count][W][F]`.
    pub fn reconstruction_errors(&self, windows: &[f32]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is true only when the CPU reported AVX2 and FMA support
            // at construction, which is what `errors_avx2_fma` is compiled for.
            return unsafe { self.errors_avx2_fma(windows) };
        }
        self.errors::<Plain>(windows)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn errors_avx2_fma(&self, windows: &[f32]) -> Vec<f32> {
        self.errors::<Fma>(windows)
    }

    #[inline(always)]
    fn errors<M: MulAdd>(&self, windows: &[f32]) -> Vec<f32> {
        let per_window = self.window * self.features;
        let count = windows.len() / per_window;
        let mut errors = vec![0.0; count * self.features];
        let mut scratch = self.scratch();
        for (tile, tile_errors) in windows[..count * per_window]
            .chunks(per_window * LANES)
            .zip(errors.chunks_mut(self.features * LANES))
        {
            self.load_tile(tile, &mut scratch);
            self.score_tile::<M>(&mut scratch);
            let windows_in_tile = tile.len() / per_window;
            for (window, out) in tile_errors.chunks_mut(self.features).enumerate() {
                debug_assert!(window < windows_in_tile);
                for (feature, value) in out.iter_mut().enumerate() {
                    *value = scratch.errors[feature][window] / self.window as f32;
                }
            }
        }
        errors
    }

    fn scratch(&self) -> Scratch {
        let zeros = |n: usize| vec![[0.0; LANES]; n];
        let layers = self.encoder.len();
        Scratch {
            encoder_h: zeros(layers * self.hidden),
            encoder_c: zeros(layers * self.hidden),
            decoder_h: zeros(layers * self.hidden),
            decoder_c: zeros(layers * self.hidden),
            gates: zeros(self.padded_gates),
            decoder_input_gates: zeros(self.padded_gates),
            inputs: zeros(self.window * self.features),
            outputs: zeros(self.features),
            errors: zeros(self.features),
        }
    }

    /// Transposes up to [`LANES`] windows into lanes; missing windows become zeros.
    fn load_tile(&self, tile: &[f32], scratch: &mut Scratch) {
        let per_window = self.window * self.features;
        for slot in scratch.inputs.iter_mut() {
            *slot = [0.0; LANES];
        }
        for (lane, window) in tile.chunks_exact(per_window).enumerate() {
            for (slot, &value) in scratch.inputs.iter_mut().zip(window) {
                slot[lane] = value;
            }
        }
    }

    /// Runs encoder, decoder and output layer over the tile in `scratch.inputs` and
    /// leaves the summed squared error per feature in `scratch.errors`.
    #[inline(always)]
    fn score_tile<M: MulAdd>(&self, scratch: &mut Scratch) {
        let hidden = self.hidden;
        let Scratch {
            encoder_h,
            encoder_c,
            decoder_h,
            decoder_c,
            gates,
            decoder_input_gates,
            inputs,
            outputs,
            errors,
        } = scratch;
        for state in [
            &mut *encoder_h,
            &mut *encoder_c,
            &mut *decoder_h,
            &mut *decoder_c,
        ] {
            state.iter_mut().for_each(|lanes| *lanes = [0.0; LANES]);
        }
        errors.iter_mut().for_each(|lanes| *lanes = [0.0; LANES]);

        for step in inputs.chunks_exact(self.features) {
            for (index, layer) in self.encoder.iter().enumerate() {
                fill_bias(gates, &layer.bias);
                if index == 0 {
                    multiply_add::<M>(&layer.input_weights, step, gates);
                } else {
                    let below = &encoder_h[(index - 1) * hidden..index * hidden];
                    multiply_add::<M>(&layer.input_weights, below, gates);
                }
                let (h, c) = (
                    &mut encoder_h[index * hidden..(index + 1) * hidden],
                    &mut encoder_c[index * hidden..(index + 1) * hidden],
                );
                multiply_add::<M>(&layer.hidden_weights, h, gates);
                update_state::<M>(gates, hidden, h, c);
            }
        }

        // The code is the top encoder layer's last hidden state.
        let top = self.encoder.len() - 1;
        let code = &encoder_h[top * hidden..(top + 1) * hidden];
        fill_bias(decoder_input_gates, &self.decoder[0].bias);
        multiply_add::<M>(&self.decoder[0].input_weights, code, decoder_input_gates);

        for step in inputs.chunks_exact(self.features) {
            for (index, layer) in self.decoder.iter().enumerate() {
                if index == 0 {
                    gates.copy_from_slice(decoder_input_gates);
                } else {
                    fill_bias(gates, &layer.bias);
                    let below = &decoder_h[(index - 1) * hidden..index * hidden];
                    multiply_add::<M>(&layer.input_weights, below, gates);
                }
                let (h, c) = (
                    &mut decoder_h[index * hidden..(index + 1) * hidden],
                    &mut decoder_c[index * hidden..(index + 1) * hidden],
                );
                multiply_add::<M>(&layer.hidden_weights, h, gates);
                update_state::<M>(gates, hidden, h, c);
            }
            let last = &decoder_h[top * hidden..(top + 1) * hidden];
            for (feature, output) in outputs.iter_mut().enumerate() {
                let weights = &self.output_weight[feature * hidden..(feature + 1) * hidden];
                let mut sum = [self.output_bias[feature]; LANES];
                for (&weight, h) in weights.iter().zip(last) {
                    for lane in 0..LANES {
                        sum[lane] = M::mul_add(weight, h[lane], sum[lane]);
                    }
                }
                *output = sum;
            }
            for ((error, output), input) in errors.iter_mut().zip(outputs.iter()).zip(step) {
                for lane in 0..LANES {
                    let difference = output[lane] - input[lane];
                    error[lane] = M::mul_add(difference, difference, error[lane]);
                }
            }
        }
    }
}

#[inline(always)]
fn fill_bias(gates: &mut [Lanes], bias: &[f32]) {
    for (slot, &value) in gates.iter_mut().zip(bias) {
        *slot = [value; LANES];
    }
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LstmAutoencoder;
    use tch::Device;

    /// Per-feature mean squared error computed by libtorch, `[count][F]`.
    fn libtorch_errors(model: &LstmAutoencoder, windows: &[f32], arch: Architecture) -> Vec<f32> {
        let count = windows.len() as i64 / (arch.window * arch.features);
        let input = Tensor::from_slice(windows).view([count, arch.window, arch.features]);
        let errors = tch::no_grad(|| {
            (model.forward(&input) - &input)
                .square()
                .mean_dim(1, false, Kind::Float)
                .contiguous()
                .view([-1])
        });
        Vec::<f32>::try_from(&errors).unwrap()
    }

    fn check_agreement(arch: Architecture, counts: &[usize], seed: i64) {
        tch::manual_seed(seed);
        let vars = nn::VarStore::new(Device::Cpu);
        let model = LstmAutoencoder::new(&vars.root(), arch);
        let fused = FusedAutoencoder::from_vars(&vars, arch).unwrap();
        for &count in counts {
            let values = count * (arch.window * arch.features) as usize;
            let windows: Vec<f32> =
                Vec::try_from(&(Tensor::randn([values as i64], (Kind::Float, Device::Cpu)) * 1.5))
                    .unwrap();
            let expected = libtorch_errors(&model, &windows, arch);
            let actual = fused.reconstruction_errors(&windows);
            assert_eq!(actual.len(), expected.len(), "{arch:?}, {count} windows");
            for (index, (a, e)) in actual.iter().zip(&expected).enumerate() {
                let tolerance = 1e-4 * e.abs() + 1e-6;
                assert!(
                    (a - e).abs() <= tolerance,
                    "{arch:?}, {count} windows, value {index}: fused {a}, libtorch {e}"
                );
            }
        }
    }

    #[test]
    fn default_shape_matches_libtorch() {
        let arch = Architecture {
            features: 5,
            window: 20,
            hidden_size: 16,
            num_layers: 1,
        };
        check_agreement(arch, &[1, 7, 8, 9, 33], 1);
    }

    #[test]
    fn stacked_odd_sizes_match_libtorch() {
        let arch = Architecture {
            features: 3,
            window: 6,
            hidden_size: 5,
            num_layers: 2,
        };
        check_agreement(arch, &[1, 8, 17], 2);
    }

    #[test]
    fn portable_path_matches_simd_path() {
        let arch = Architecture {
            features: 5,
            window: 10,
            hidden_size: 8,
            num_layers: 1,
        };
        tch::manual_seed(3);
        let vars = nn::VarStore::new(Device::Cpu);
        let _model = LstmAutoencoder::new(&vars.root(), arch);
        let fused = FusedAutoencoder::from_vars(&vars, arch).unwrap();
        let windows: Vec<f32> = (0..11 * 50)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        let portable = fused.errors::<Plain>(&windows);
        let dispatched = fused.reconstruction_errors(&windows);
        for (p, d) in portable.iter().zip(&dispatched) {
            assert!(
                (p - d).abs() <= 1e-5 * p.abs() + 1e-7,
                "portable {p}, dispatched {d}"
            );
        }
    }

    #[test]
    fn exp_is_accurate() {
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let expected = (x as f64).exp();
            let actual = exp::<Plain>(x) as f64;
            assert!(
                ((actual - expected) / expected).abs() < 1e-6,
                "exp({x}) = {actual}, expected {expected}"
            );
        }
    }

    #[test]
    fn missing_variable_is_an_error() {
        let arch = Architecture {
            features: 2,
            window: 3,
            hidden_size: 4,
            num_layers: 1,
        };
        let vars = nn::VarStore::new(Device::Cpu);
        let error = FusedAutoencoder::from_vars(&vars, arch).unwrap_err();
        assert!(error.contains("not found"), "{error}");
    }
}
