# presets.sh — the synthetic-model presets the bench scripts share
# (sourced by e2e.sh and quality.sh, which define die()).

# preset -> the base name of its files
model_name() {
    case "$1" in
    gpt2) echo gpt2-124m ;;
    tinyllama) echo tinyllama-1.1b ;;
    llama3.2-1b) echo llama3.2-1b ;;
    qwen2.5-0.5b) echo qwen2.5-0.5b ;;
    *) die "unknown preset '$1' (gpt2 tinyllama llama3.2-1b qwen2.5-0.5b)" ;;
    esac
}
