"""Exports of trained models for fast serving."""
