"""Audio modality: a native torch log-mel front-end (HiFi-GAN / Vocos presets, librosa
parity), audio I/O, an offline multi-speaker speech corpus synthesised with espeak-ng and
flite, readers for LJSpeech-style and speaker-per-folder data, Griffin-Lim and a trainable
Vocos-like iSTFT vocoder with spectral losses."""

from modalities.audio.corpus import CorpusConfig, SpeechCorpus, build_corpus
from modalities.audio.features import MelConfig, MelNormalizer, MelSpec, mel_filterbank
from modalities.audio.folder import LJSpeechDataset, SpeakerFolderDataset
from modalities.audio.io import collate_speech, load_audio, resample_wave, save_wav
from modalities.audio.losses import MultiResolutionSTFTLoss, VocoderLoss, spectral_convergence
from modalities.audio.sentences import make_sentences, split_sentences
from modalities.audio.stft import Stft
from modalities.audio.tts import Speaker
from modalities.audio.vocoder import GriffinLim, IStftVocoder, VocoderConfig

__all__ = [
    "CorpusConfig", "GriffinLim", "IStftVocoder", "LJSpeechDataset", "MelConfig",
    "MelNormalizer", "MelSpec", "MultiResolutionSTFTLoss", "Speaker", "SpeakerFolderDataset",
    "SpeechCorpus", "Stft", "VocoderConfig", "VocoderLoss", "build_corpus", "collate_speech",
    "load_audio", "make_sentences", "mel_filterbank", "resample_wave", "save_wav",
    "spectral_convergence", "split_sentences",
]
