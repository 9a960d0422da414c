"""Shared neural-network machinery for the contrastive models."""
