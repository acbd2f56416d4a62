"""Saliency maps and their overlays."""
