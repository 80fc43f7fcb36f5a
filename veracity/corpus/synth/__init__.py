"""The embedded synthetic audio-visual deepfake corpus (DESIGN §4)."""

from veracity.corpus.synth.generate import GenerateResult, generate, plan_corpus

__all__ = ["GenerateResult", "generate", "plan_corpus"]
