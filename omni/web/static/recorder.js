// AudioWorklet for the Record button: hands each block of microphone samples (float32, the audio
// context's rate, first channel) to the page, which encodes them as a 16-bit WAV when recording stops.
class PcmRecorder extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));  // the engine reuses its buffers: copy
    return true;
  }
}
registerProcessor("pcm-recorder", PcmRecorder);
