"""Chat: templates (rendered and parsed by llama.cpp), named formats, media sources and the projector."""
