// @ts-check
// The shapes the chat core and the views share (JSDoc only: this module exports nothing at run time).

/**
 * @typedef {object} Stats  What the footer of an answer shows.
 * @property {number|null} ttft_ms  milliseconds from sending to the first token
 * @property {number|null} tps  tokens per second after the first one
 * @property {number|null} prompt_tokens
 * @property {number|null} completion_tokens
 * @property {boolean} estimated  true when the gateway reported no usage (chunks were counted)
 */

/**
 * @typedef {object} ErrorView  An answer's failure, as the error box shows it.
 * @property {string} title
 * @property {string} [detail]
 * @property {number} [status]
 */

/**
 * @typedef {'streaming'|'done'|'stopped'|'error'} MessageStatus
 *
 * @typedef {object} Message
 * @property {string} id
 * @property {'user'|'assistant'} role
 * @property {string} content
 * @property {number} created
 * @property {string} [model]
 * @property {MessageStatus} [status]
 * @property {Stats} [stats]
 * @property {ErrorView} [error]
 * @property {number} [truncated]  oldest messages the gateway left out of this answer's request
 * @property {string} [reasoning]
 * @property {string} [requestId]
 * @property {string} [finish]  the finish_reason
 */

/**
 * @typedef {{temperature?: number, max_tokens?: number}} ChatParams
 *
 * @typedef {object} Conversation
 * @property {string} id
 * @property {string} title
 * @property {boolean} [renamed]  the user chose the title: it no longer follows the first message
 * @property {number} created
 * @property {number} updated
 * @property {string|null} model
 * @property {string} system
 * @property {ChatParams} params
 * @property {Message[]} messages
 * @property {boolean} [deleted]  deleted while its answer streams: the stream must not save it back
 *
 * @typedef {object} ConversationSummary  An entry of the stored index (the sidebar's list).
 * @property {string} id
 * @property {string} title
 * @property {number} created
 * @property {number} updated
 * @property {string|null} model
 * @property {number} n  number of messages
 */

/**
 * @typedef {object} Model  An entry of GET /v1/models (the gateway adds the fields after `id`).
 * @property {string} id
 * @property {string} [task]  generate | chat | embed
 * @property {string} [state]
 * @property {string} [state_reason]
 * @property {string} [preset_of]
 * @property {Record<string, unknown>} [defaults]
 * @property {string[]} [aliases]
 * @property {boolean} [default]
 * @property {number} [context_limit]
 * @property {number} [max_model_len]
 *
 * @typedef {{state?: string, reason?: string}} ModelHealth
 * @typedef {{models?: Record<string, ModelHealth>}} Health  GET /health
 */

/**
 * @typedef {object} Usage
 * @property {number} [prompt_tokens]
 * @property {number} [completion_tokens]
 *
 * @typedef {object} ChatChunk  One streamed chat.completion.chunk.
 * @property {Usage} [usage]
 * @property {{delta?: {content?: string, reasoning_content?: string, reasoning?: string}, finish_reason?: string|null}[]} [choices]
 */

/**
 * @typedef {object} UsageCounts  What a window of usage adds up to (GET /v1/usage, /v1/usage/team).
 * @property {number} requests
 * @property {number} errors
 * @property {number} prompt_tokens
 * @property {number} completion_tokens
 * @property {number} cached_tokens
 * @property {number} gpu_seconds  seconds the requests held one of a model's slots
 *
 * @typedef {UsageCounts & {model: string, gpu_share: number}} ModelUsage  gpu_share: of that model's busy slot-seconds, 0..1
 * @typedef {UsageCounts & {day: string}} DayUsage  day: the gateway host's calendar day, YYYY-MM-DD
 *
 * @typedef {object} Budget  One token budget of a key.
 * @property {number|null} limit  null: no budget
 * @property {number} used
 * @property {number|null} remaining
 * @property {string} resets_at  UTC ISO-8601
 *
 * @typedef {object} MyUsage  GET /v1/usage: the calling key's own usage.
 * @property {string} key  the key's name
 * @property {boolean} admin  it may read GET /v1/usage/team
 * @property {string} since
 * @property {string|null} expires  YYYY-MM-DD, the last day the key is accepted
 * @property {string[]|null} models  the model names (globs) it may use; null: all
 * @property {{tokens_per_day: Budget, tokens_per_month: Budget}} quota
 * @property {UsageCounts} totals
 * @property {ModelUsage[]} by_model
 * @property {DayUsage[]} by_day
 *
 * @typedef {UsageCounts & {key: string, gpu_share: number, tokens_today: number, tokens_month: number,
 *   tokens_per_day: number|null, tokens_per_month: number|null, expires: string|null}} KeyUsage
 *   gpu_share: of all slot-seconds in the window
 *
 * @typedef {object} TeamUsage  GET /v1/usage/team (admin keys only).
 * @property {string} since
 * @property {UsageCounts} totals
 * @property {KeyUsage[]} by_key
 * @property {ModelUsage[]} by_model
 * @property {DayUsage[]} by_day  the whole team per day, oldest first
 */

/**
 * @typedef {'validating'|'in_progress'|'finalizing'|'completed'|'failed'|'cancelling'|'cancelled'|'expired'} BatchStatus
 *
 * @typedef {object} Batch  One of GET /v1/batches's `data` (OpenAI's Batch object; the fields the panel reads).
 * @property {string} id
 * @property {string} endpoint  /v1/chat/completions, /v1/completions or /v1/embeddings
 * @property {BatchStatus} status
 * @property {number} created_at  Unix seconds
 * @property {{total: number, completed: number, failed: number}} request_counts
 * @property {string|null} output_file_id
 * @property {string|null} error_file_id
 * @property {{data: {line?: number|null, code?: string, message: string}[]}|null} errors  why a batch failed
 *
 * @typedef {object} BatchList  GET /v1/batches
 * @property {Batch[]} data  newest first
 * @property {boolean} has_more
 */

export {};
