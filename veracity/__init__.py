"""Veracity: multimodal deepfake video detection."""
