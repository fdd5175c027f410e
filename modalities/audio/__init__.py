"""Audio modality: a native torch log-mel front-end (HiFi-GAN / Vocos presets, librosa
parity), audio I/O, an offline multi-speaker speech corpus synthesised with espeak-ng and
flite, readers for LJSpeech-style and speaker-per-folder data, Griffin-Lim and a trainable
Vocos-like iSTFT vocoder with spectral losses, and Matcha-TTS-style text-to-speech by
conditional flow matching (``recipe=text2speech_cfm``; :class:`TTS` to use a trained run),
and its offline evaluation (:func:`evaluate_tts_run`, ``toolkit eval``: speaker accuracy and
phoneme error rate of metric networks trained on the corpus, MCD-DTW, F0, durations, RTF)."""

from modalities.audio.align import length_regulate, monotonic_alignment_search
from modalities.audio.corpus import CorpusConfig, SpeechCorpus, build_corpus
from modalities.audio.data import SpeechDataset, collate_tts
from modalities.audio.features import MelConfig, MelNormalizer, MelSpec, mel_filterbank
from modalities.audio.folder import LJSpeechDataset, SpeakerFolderDataset
from modalities.audio.io import collate_speech, load_audio, resample_wave, save_wav
from modalities.audio.losses import MultiResolutionSTFTLoss, VocoderLoss, spectral_convergence
from modalities.audio.metrics import mcd_dtw, phoneme_error_rate, yin_f0
from modalities.audio.model import TTSModel
from modalities.audio.recognizers import PhonemeRecognizer, SpeakerClassifier
from modalities.audio.sentences import make_sentences, split_sentences
from modalities.audio.stft import Stft
from modalities.audio.synth import TTS
from modalities.audio.task import TextToSpeechTask
from modalities.audio.text import SYMBOL_SET, SymbolSet, text_to_phonemes
from modalities.audio.tts import Speaker
from modalities.audio.tts_eval import evaluate_tts_run, format_tts_report
from modalities.audio.vocoder import GriffinLim, IStftVocoder, VocoderConfig

__all__ = [
    "SYMBOL_SET", "TTS", "CorpusConfig", "GriffinLim", "IStftVocoder", "LJSpeechDataset",
    "MelConfig", "MelNormalizer", "MelSpec", "MultiResolutionSTFTLoss", "PhonemeRecognizer",
    "Speaker", "SpeakerClassifier", "SpeakerFolderDataset", "SpeechCorpus", "SpeechDataset",
    "Stft", "SymbolSet", "TTSModel", "TextToSpeechTask", "VocoderConfig", "VocoderLoss",
    "build_corpus", "collate_speech", "collate_tts", "evaluate_tts_run", "format_tts_report",
    "length_regulate", "load_audio", "make_sentences", "mcd_dtw", "mel_filterbank",
    "monotonic_alignment_search", "phoneme_error_rate", "resample_wave", "save_wav",
    "spectral_convergence", "split_sentences", "text_to_phonemes", "yin_f0",
]
