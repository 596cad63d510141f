"""The run report: confusion matrix, ROC, learning curves, filters, feature maps, Grad-CAM,
mistakes, and the HTML page. Imports `cnn.evaluation`, `cnn.models`.
"""
