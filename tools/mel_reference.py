#!/usr/bin/env python3
"""Float64 reference of Whisper's log-mel spectrogram, for tests/test_audio.c.

Whisper (openai/whisper, whisper/audio.py) computes, for a 16 kHz waveform:
    audio = pad_or_trim(audio)                     # zeros to / first 480000 samples (30 s)
    stft = torch.stft(audio, 400, 160, window=torch.hann_window(400), return_complex=True)
                                                   # center=True, pad_mode="reflect"
    magnitudes = stft[..., :-1].abs() ** 2         # (201, 3000): last frame dropped
    mel_spec = filters @ magnitudes                # librosa.filters.mel(16000, 400, n_mels), Slaney
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    log_spec = (log_spec + 4.0) / 4.0
This file does the same in numpy float64, with the mel filters computed here from the Slaney
formulas (librosa's hz_to_mel/mel_to_hz with htk=False, norm="slaney"), not taken from a library.
numpy's FFT (float64) computes the DFT.

Commands (raw files are little-endian, no header):
  mel_reference.py mel WAVE.f32 OUT.f64 [--n-mels 80] [--torchaudio OUT.f32]
      WAVE: float32 samples at 16 kHz. OUT: float64 (n_mels, 3000) row-major. --torchaudio also
      writes torchaudio's MelSpectrogram (norm="slaney", mel_scale="slaney") version, float32.
  mel_reference.py filters OUT.f64 [--n-mels 80]
      the (n_mels, 201) float64 filterbank.
  mel_reference.py decode AUDIO_FILE OUT.f32
      torchaudio.load, mean of the channels, float32 at the file's rate; prints the rate.
  mel_reference.py batch LIST
      one Python start for many jobs (tests/test_audio.c): each line of LIST is one of
        mel WAVE OUT N_MELS [TA_OUT]  |  filters OUT N_MELS  |  decode AUDIO OUT
      (decode prints "rate OUT RATE").
  mel_reference.py selftest
      the filters against torchaudio.functional.melscale_fbanks (when torchaudio is present).
"""
import argparse
import sys

import numpy as np

SR, N_FFT, HOP, CHUNK = 16000, 400, 160, 480000


def hz_to_mel(f):
    """Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4)."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    lin = f / f_sp
    log = min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, lin)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_mels):
    """(n_mels, 201) triangles between n_mels + 2 points evenly spaced in Slaney mels from 0 Hz to
    8 kHz, each scaled by 2 / (its width in Hz) (Slaney's constant-area normalisation)."""
    fft_freqs = np.arange(N_FFT // 2 + 1, dtype=np.float64) * SR / N_FFT
    mel_pts = np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2.0), n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    w = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lo, c, hi = hz_pts[i], hz_pts[i + 1], hz_pts[i + 2]
        lower = (fft_freqs - lo) / (c - lo)
        upper = (hi - fft_freqs) / (hi - c)
        w[i] = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hi - lo))
    return w


def log_mel(x, n_mels):
    x = np.asarray(x, dtype=np.float64)
    x = x[:CHUNK] if x.size >= CHUNK else np.pad(x, (0, CHUNK - x.size))
    xp = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n_frames = 1 + (xp.size - N_FFT) // HOP  # 3001
    idx = np.arange(n_frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    spec = np.fft.rfft(xp[idx] * window, axis=-1)  # (3001, 201)
    power = (spec.real ** 2 + spec.imag ** 2)[:-1].T  # (201, 3000)
    mel = mel_filters(n_mels) @ power
    lg = np.log10(np.maximum(mel, 1e-10))
    lg = np.maximum(lg, lg.max() - 8.0)
    return (lg + 4.0) / 4.0


def torchaudio_log_mel(x, n_mels):
    import torch
    import torchaudio

    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    t = t[:CHUNK] if t.numel() >= CHUNK else torch.nn.functional.pad(t, (0, CHUNK - t.numel()))
    ms = torchaudio.transforms.MelSpectrogram(sample_rate=SR, n_fft=N_FFT, hop_length=HOP,
                                              n_mels=n_mels, f_min=0.0, f_max=SR / 2, power=2.0,
                                              norm="slaney", mel_scale="slaney", center=True,
                                              pad_mode="reflect")
    s = ms(t)[..., :-1]
    lg = torch.clamp(s, min=1e-10).log10()
    lg = torch.maximum(lg, lg.max() - 8.0)
    return ((lg + 4.0) / 4.0).numpy()


def decode(path, out):
    import torchaudio

    w, rate = torchaudio.load(path)
    w.mean(dim=0).numpy().astype("<f4").tofile(out)
    return rate


def batch(list_path):
    for line in open(list_path):
        f = line.split()
        if not f:
            continue
        if f[0] == "mel":
            x = np.fromfile(f[1], dtype="<f4")
            log_mel(x, int(f[3])).astype("<f8").tofile(f[2])
            if len(f) > 4:
                torchaudio_log_mel(x, int(f[3])).astype("<f4").tofile(f[4])
        elif f[0] == "filters":
            mel_filters(int(f[2])).astype("<f8").tofile(f[1])
        elif f[0] == "decode":
            print("rate", f[2], decode(f[1], f[2]), flush=True)
        else:
            raise SystemExit(f"mel_reference.py: unknown job {f[0]!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mel")
    m.add_argument("wave")
    m.add_argument("out")
    m.add_argument("--n-mels", type=int, default=80)
    m.add_argument("--torchaudio")
    f = sub.add_parser("filters")
    f.add_argument("out")
    f.add_argument("--n-mels", type=int, default=80)
    d = sub.add_parser("decode")
    d.add_argument("audio")
    d.add_argument("out")
    b = sub.add_parser("batch")
    b.add_argument("list")
    sub.add_parser("selftest")
    a = ap.parse_args()

    if a.cmd == "mel":
        x = np.fromfile(a.wave, dtype="<f4")
        log_mel(x, a.n_mels).astype("<f8").tofile(a.out)
        if a.torchaudio:
            torchaudio_log_mel(x, a.n_mels).astype("<f4").tofile(a.torchaudio)
    elif a.cmd == "filters":
        mel_filters(a.n_mels).astype("<f8").tofile(a.out)
    elif a.cmd == "decode":
        print(decode(a.audio, a.out))
    elif a.cmd == "batch":
        batch(a.list)
    elif a.cmd == "selftest":
        import torchaudio.functional as F

        for n in (80, 128):
            ours = mel_filters(n)
            ta = F.melscale_fbanks(N_FFT // 2 + 1, 0.0, SR / 2, n, SR, norm="slaney",
                                   mel_scale="slaney").numpy().T
            err = np.abs(ours - ta).max()
            print(f"n_mels {n}: max |ours - torchaudio| = {err:.3g} (max weight {ours.max():.4g})")
            if err > 1e-6:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
