"""Network definitions: StyleGAN2 G/D, EfficientNet-Lite0, LPIPS, MTCNN, detector heads."""
