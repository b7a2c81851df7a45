// Runs a TF.js graph model (tensorflowjs_converter's model.json and weight
// files) on inputs from a JSON file and prints its outputs as JSON, with the
// plain @tensorflow/tfjs package (CPU backend; no native binary).
//
//   node run_graph_model.mjs MODEL_DIR INPUTS_JSON
//
// INPUTS_JSON: {"name": {"dtype": "float32", "shape": [...], "data": [...]}, ...}
// with NaN written as null. Output: the same form, one entry per output of
// the model's signature, keyed by the signature's output names.
import fs from "node:fs";
import path from "node:path";
import * as tf from "@tensorflow/tfjs";

const [modelDir, inputsPath] = process.argv.slice(2);
if (!modelDir || !inputsPath) {
  console.error("usage: node run_graph_model.mjs MODEL_DIR INPUTS_JSON");
  process.exit(2);
}

function loadHandler(dir) {
  // tf.loadGraphModel's file:// loader needs tfjs-node; read the files here.
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, "model.json"), "utf8"));
  const specs = [];
  const buffers = [];
  for (const group of manifest.weightsManifest) {
    specs.push(...group.weights);
    for (const file of group.paths) buffers.push(fs.readFileSync(path.join(dir, file)));
  }
  const weights = Buffer.concat(buffers);
  return tf.io.fromMemory({
    modelTopology: manifest.modelTopology,
    format: manifest.format,
    generatedBy: manifest.generatedBy,
    convertedBy: manifest.convertedBy,
    signature: manifest.signature,
    userDefinedMetadata: manifest.userDefinedMetadata,
    weightSpecs: specs,
    weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength),
  });
}

await tf.setBackend("cpu");
const model = await tf.loadGraphModel(loadHandler(modelDir));
const given = JSON.parse(fs.readFileSync(inputsPath, "utf8"));
const feeds = {};
for (const [name, value] of Object.entries(given)) {
  const data = value.data.map((v) => (v === null ? NaN : v));
  feeds[name] = tf.tensor(data, value.shape, value.dtype);
}
// Inputs keyed as the SavedModel's signature declares them. Outputs by name
// through the `outputs` metadata convert.py writes ({name: graph tensor}):
// predict()'s structuredOutputKeys are paired with outputs in another order.
const signature = model.signature;
const inputs = {};
for (const [key, info] of Object.entries(signature.inputs)) {
  if (!(key in feeds)) throw new Error(`no input named ${key} in ${inputsPath}`);
  inputs[info.name] = feeds[key];
}
const named = (model.metadata || {}).outputs;
if (!named) throw new Error(`${modelDir}/model.json has no "outputs" metadata (convert it with convert.py)`);
const names = Object.keys(named);
let tensors = await model.executeAsync(inputs, names.map((n) => named[n]));
if (!Array.isArray(tensors)) tensors = [tensors];
const results = Object.fromEntries(names.map((n, i) => [n, tensors[i]]));
const out = {};
for (const [name, t] of Object.entries(results)) {
  out[name] = {
    dtype: t.dtype,
    shape: t.shape,
    data: Array.from(await t.data(), (v) => (Number.isNaN(v) ? null : v)),
  };
}
process.stdout.write(JSON.stringify(out));
