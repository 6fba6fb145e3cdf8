/* commands.h: entry points of the subcommands. Each takes (argc, argv) with argv[0] = the
 * command name and returns the process exit code. Each lives in the folder of its room:
 * info/train/export/adapt/random-checkpoint/bench in train/, generate/score/eval in eval/,
 * tokenize/detokenize/data in data/. Declared weak so the program links while a room is built. */
#ifndef T5G_COMMANDS_H
#define T5G_COMMANDS_H

#define T5G_CMD(name) int name(int argc, char **argv) __attribute__((weak))
T5G_CMD(cmd_info);
T5G_CMD(cmd_train);
T5G_CMD(cmd_adapt);
T5G_CMD(cmd_export);
T5G_CMD(cmd_generate);
T5G_CMD(cmd_score);
T5G_CMD(cmd_eval);
T5G_CMD(cmd_tokenize);
T5G_CMD(cmd_detokenize);
T5G_CMD(cmd_data);
T5G_CMD(cmd_random_checkpoint);
T5G_CMD(cmd_bench);
T5G_CMD(cmd_dump);
#undef T5G_CMD

#endif
