"""Authoring tools that write weights folders (training's saver, the nnU-Net importer, the ONNX
export). The runtime engine only reads weights folders and never imports this package; the image
leaves it out."""
