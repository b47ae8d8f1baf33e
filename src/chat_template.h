/*
 * chat_template.h — a Jinja2 subset that renders Hugging Face chat templates.
 *
 * Semantics follow transformers' apply_chat_template environment:
 * trim_blocks and lstrip_blocks on, one trailing newline of the template
 * dropped, the default (lenient) Undefined, tojson as json.dumps with
 * ensure_ascii=False, raise_exception() and strftime_now() as globals.
 *
 * Supported: {{ }}, {% %}, {# #} with -/+ whitespace control; if/elif/else,
 * for (tuple targets, inline `if` filter, else, loop.*, break/continue),
 * set (names, namespace attributes, block set), macro, filter blocks,
 * generation blocks; literals (str, int, float, list, dict, tuple), the
 * Python operators Jinja has, `in`, `is` tests, slicing, filters and the
 * str/dict methods templates use. Anything else fails with
 * LOUPE_ERR_UNSUPPORTED naming the template line — never a crash.
 */
#ifndef LOUPE_CHAT_TEMPLATE_H
#define LOUPE_CHAT_TEMPLATE_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "loupe.h"

/* Renders tmpl with the variables of ctx (a JSON object: messages,
 * add_generation_prompt, bos_token, ...; may be NULL). *out is malloc'd and
 * NUL-terminated; *out_len (may be NULL) gets its length.
 * Errors: LOUPE_ERR_FORMAT (syntax or type error), LOUPE_ERR_UNSUPPORTED
 * (construct outside the subset), LOUPE_ERR_ARG (the template called
 * raise_exception: the messages are not acceptable to it), LOUPE_ERR_NOMEM
 * (including the output/step limits). The message names the line. */
loupe_status lp_template_render(const char *tmpl, const cJSON *ctx, char **out,
                                size_t *out_len);

/* The template used for models that ship none (see docs/SERVER.md). */
extern const char lp_chat_fallback_template[];

#endif
