/* Config files of the released models, as make_random_model writes them.
 * Values are those of the Hugging Face repositories (runwayml/stable-
 * diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0, -xl-refiner-1.0,
 * -3.5-medium, -3.5-large); fields other than sizes are identical to the
 * tiny fixtures in ../shared/fixtures, which were made from the same files. */
#ifndef SDGEN_TOOLS_RANDOM_MODEL_CONFIGS_H
#define SDGEN_TOOLS_RANDOM_MODEL_CONFIGS_H

#define CFG_DOWN4_ENC "[\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\"]"
#define CFG_UP4_DEC "[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\"]"

static const char CFG_SD15_INDEX[] =
    "{\"_class_name\":\"StableDiffusionPipeline\",\"_diffusers_version\":\"0.6.0\","
    "\"feature_extractor\":[null,null],\"requires_safety_checker\":false,"
    "\"safety_checker\":[null,null],\"scheduler\":[\"diffusers\",\"PNDMScheduler\"],"
    "\"text_encoder\":[\"transformers\",\"CLIPTextModel\"],"
    "\"tokenizer\":[\"transformers\",\"CLIPTokenizer\"],"
    "\"unet\":[\"diffusers\",\"UNet2DConditionModel\"],\"vae\":[\"diffusers\",\"AutoencoderKL\"]}";

static const char CFG_SD15_SCHEDULER[] =
    "{\"_class_name\":\"PNDMScheduler\",\"_diffusers_version\":\"0.6.0\",\"beta_end\":0.012,"
    "\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,\"clip_sample\":false,"
    "\"num_train_timesteps\":1000,\"set_alpha_to_one\":false,\"skip_prk_steps\":true,"
    "\"steps_offset\":1,\"trained_betas\":null}";

static const char CFG_SD15_UNET[] =
    "{\"_class_name\":\"UNet2DConditionModel\",\"_diffusers_version\":\"0.6.0\",\"act_fn\":\"silu\","
    "\"attention_head_dim\":8,\"block_out_channels\":[320,640,1280,1280],"
    "\"center_input_sample\":false,\"cross_attention_dim\":768,\"down_block_types\":"
    "[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
    "\"downsample_padding\":1,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,"
    "\"layers_per_block\":2,\"mid_block_scale_factor\":1,\"norm_eps\":1e-05,\"norm_num_groups\":32,"
    "\"out_channels\":4,\"sample_size\":64,\"up_block_types\":"
    "[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";

/* SimianLuo/LCM_Dreamshaper_v7: the SD 1.5 UNet + time_cond_proj_dim 256 */
static const char CFG_LCM_INDEX[] =
    "{\"_class_name\":\"LatentConsistencyModelPipeline\",\"_diffusers_version\":\"0.22.0.dev0\","
    "\"feature_extractor\":[null,null],\"requires_safety_checker\":false,"
    "\"safety_checker\":[null,null],\"scheduler\":[\"diffusers\",\"LCMScheduler\"],"
    "\"text_encoder\":[\"transformers\",\"CLIPTextModel\"],"
    "\"tokenizer\":[\"transformers\",\"CLIPTokenizer\"],"
    "\"unet\":[\"diffusers\",\"UNet2DConditionModel\"],\"vae\":[\"diffusers\",\"AutoencoderKL\"]}";

static const char CFG_LCM_SCHEDULER[] =
    "{\"_class_name\":\"LCMScheduler\",\"_diffusers_version\":\"0.22.0.dev0\",\"beta_end\":0.012,"
    "\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,\"clip_sample\":false,"
    "\"clip_sample_range\":1.0,\"dynamic_thresholding_ratio\":0.995,\"num_train_timesteps\":1000,"
    "\"original_inference_steps\":50,\"prediction_type\":\"epsilon\","
    "\"rescale_betas_zero_snr\":false,\"sample_max_value\":1.0,\"set_alpha_to_one\":true,"
    "\"steps_offset\":1,\"thresholding\":false,\"timestep_scaling\":10.0,"
    "\"timestep_spacing\":\"leading\",\"trained_betas\":null}";

static const char CFG_LCM_UNET[] =
    "{\"_class_name\":\"UNet2DConditionModel\",\"_diffusers_version\":\"0.22.0.dev0\",\"act_fn\":\"silu\","
    "\"attention_head_dim\":8,\"block_out_channels\":[320,640,1280,1280],"
    "\"center_input_sample\":false,\"cross_attention_dim\":768,\"down_block_types\":"
    "[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
    "\"downsample_padding\":1,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,"
    "\"layers_per_block\":2,\"mid_block_scale_factor\":1,\"norm_eps\":1e-05,\"norm_num_groups\":32,"
    "\"out_channels\":4,\"sample_size\":96,\"time_cond_proj_dim\":256,\"up_block_types\":"
    "[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";

/* stabilityai/sd-turbo (SD 2.1 architecture, 512 px, epsilon, trailing
 * Euler as shipped) */
static const char CFG_SD_TURBO_SCHEDULER[] =
    "{\"_class_name\":\"EulerDiscreteScheduler\",\"_diffusers_version\":\"0.24.0.dev0\","
    "\"beta_end\":0.012,\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,"
    "\"clip_sample\":false,\"interpolation_type\":\"linear\",\"num_train_timesteps\":1000,"
    "\"prediction_type\":\"epsilon\",\"sample_max_value\":1.0,\"set_alpha_to_one\":false,"
    "\"skip_prk_steps\":true,\"steps_offset\":1,\"timestep_spacing\":\"trailing\","
    "\"trained_betas\":null,\"use_karras_sigmas\":false}";

static const char CFG_SD_TURBO_UNET[] =
    "{\"_class_name\":\"UNet2DConditionModel\",\"_diffusers_version\":\"0.24.0.dev0\",\"act_fn\":\"silu\","
    "\"attention_head_dim\":[5,10,20,20],\"block_out_channels\":[320,640,1280,1280],"
    "\"center_input_sample\":false,\"cross_attention_dim\":1024,\"down_block_types\":"
    "[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
    "\"downsample_padding\":1,\"dual_cross_attention\":false,\"flip_sin_to_cos\":true,"
    "\"freq_shift\":0,\"in_channels\":4,\"layers_per_block\":2,\"mid_block_scale_factor\":1,"
    "\"norm_eps\":1e-05,\"norm_num_groups\":32,\"out_channels\":4,\"sample_size\":64,"
    "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\","
    "\"CrossAttnUpBlock2D\"],\"upcast_attention\":null,\"use_linear_projection\":true}";

static const char CFG_SD15_VAE[] =
    "{\"_class_name\":\"AutoencoderKL\",\"_diffusers_version\":\"0.6.0\",\"act_fn\":\"silu\","
    "\"block_out_channels\":[128,256,512,512],\"down_block_types\":" CFG_DOWN4_ENC ","
    "\"in_channels\":3,\"latent_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":32,"
    "\"out_channels\":3,\"sample_size\":512,\"up_block_types\":" CFG_UP4_DEC "}";

/* hidden_act, hidden_size, intermediate_size, heads, layers, projection_dim */
#define CFG_CLIP(arch, act, hidden, inter, heads, layers, proj)                             \
  "{\"architectures\":[\"" arch "\"],\"attention_dropout\":0.0,\"bos_token_id\":0,"            \
  "\"dropout\":0.0,\"eos_token_id\":2,\"hidden_act\":\"" act "\",\"hidden_size\":" #hidden ","  \
  "\"initializer_factor\":1.0,\"initializer_range\":0.02,\"intermediate_size\":" #inter ","     \
  "\"layer_norm_eps\":1e-05,\"max_position_embeddings\":77,\"model_type\":\"clip_text_model\"," \
  "\"num_attention_heads\":" #heads ",\"num_hidden_layers\":" #layers ",\"pad_token_id\":1,"   \
  "\"projection_dim\":" #proj ",\"torch_dtype\":\"float16\",\"vocab_size\":49408}"

static const char CFG_CLIP_L[] = CFG_CLIP("CLIPTextModel", "quick_gelu", 768, 3072, 12, 12, 768);
static const char CFG_CLIP_L_PROJ[] =
    CFG_CLIP("CLIPTextModelWithProjection", "quick_gelu", 768, 3072, 12, 12, 768);
/* OpenCLIP ViT-H text tower, penultimate layer (23 of 24 layers) */
static const char CFG_CLIP_H[] = CFG_CLIP("CLIPTextModel", "gelu", 1024, 4096, 16, 23, 512);
static const char CFG_CLIP_BIGG[] =
    CFG_CLIP("CLIPTextModelWithProjection", "gelu", 1280, 5120, 20, 32, 1280);

static const char CFG_SDXL_INDEX[] =
    "{\"_class_name\":\"StableDiffusionXLPipeline\",\"_diffusers_version\":\"0.19.0.dev0\","
    "\"force_zeros_for_empty_prompt\":true,\"scheduler\":[\"diffusers\",\"EulerDiscreteScheduler\"],"
    "\"text_encoder\":[\"transformers\",\"CLIPTextModel\"],"
    "\"text_encoder_2\":[\"transformers\",\"CLIPTextModelWithProjection\"],"
    "\"tokenizer\":[\"transformers\",\"CLIPTokenizer\"],\"tokenizer_2\":[\"transformers\",\"CLIPTokenizer\"],"
    "\"unet\":[\"diffusers\",\"UNet2DConditionModel\"],\"vae\":[\"diffusers\",\"AutoencoderKL\"]}";

static const char CFG_REFINER_INDEX[] =
    "{\"_class_name\":\"StableDiffusionXLImg2ImgPipeline\",\"_diffusers_version\":\"0.19.0.dev0\","
    "\"force_zeros_for_empty_prompt\":false,\"requires_aesthetics_score\":true,"
    "\"scheduler\":[\"diffusers\",\"EulerDiscreteScheduler\"],\"text_encoder\":[null,null],"
    "\"text_encoder_2\":[\"transformers\",\"CLIPTextModelWithProjection\"],\"tokenizer\":[null,null],"
    "\"tokenizer_2\":[\"transformers\",\"CLIPTokenizer\"],"
    "\"unet\":[\"diffusers\",\"UNet2DConditionModel\"],\"vae\":[\"diffusers\",\"AutoencoderKL\"]}";

static const char CFG_SDXL_SCHEDULER[] =
    "{\"_class_name\":\"EulerDiscreteScheduler\",\"_diffusers_version\":\"0.19.0.dev0\","
    "\"beta_end\":0.012,\"beta_schedule\":\"scaled_linear\",\"beta_start\":0.00085,"
    "\"clip_sample\":false,\"interpolation_type\":\"linear\",\"num_train_timesteps\":1000,"
    "\"prediction_type\":\"epsilon\",\"sample_max_value\":1.0,\"set_alpha_to_one\":false,"
    "\"skip_prk_steps\":true,\"steps_offset\":1,\"timestep_spacing\":\"leading\","
    "\"trained_betas\":null,\"use_karras_sigmas\":false}";

#define CFG_XL_UNET(heads, blocks, cross, down, add_in, layers, up)                            \
  "{\"_class_name\":\"UNet2DConditionModel\",\"_diffusers_version\":\"0.19.0.dev0\","           \
  "\"act_fn\":\"silu\",\"addition_embed_type\":\"text_time\",\"addition_embed_type_num_heads\":64," \
  "\"addition_time_embed_dim\":256,\"attention_head_dim\":" heads ",\"block_out_channels\":"    \
  blocks ",\"center_input_sample\":false,\"class_embed_type\":null,"                              \
  "\"class_embeddings_concat\":false,\"conv_in_kernel\":3,\"conv_out_kernel\":3,"                 \
  "\"cross_attention_dim\":" #cross ",\"cross_attention_norm\":null,\"down_block_types\":" down \
  ",\"downsample_padding\":1,\"dual_cross_attention\":false,\"encoder_hid_dim\":null,"           \
  "\"encoder_hid_dim_type\":null,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,"   \
  "\"layers_per_block\":2,\"mid_block_only_cross_attention\":null,\"mid_block_scale_factor\":1," \
  "\"mid_block_type\":\"UNetMidBlock2DCrossAttn\",\"norm_eps\":1e-05,\"norm_num_groups\":32,"    \
  "\"num_attention_heads\":null,\"num_class_embeds\":null,\"only_cross_attention\":false,"       \
  "\"out_channels\":4,\"projection_class_embeddings_input_dim\":" #add_in ","                    \
  "\"resnet_out_scale_factor\":1.0,\"resnet_skip_time_act\":false,"                               \
  "\"resnet_time_scale_shift\":\"default\",\"sample_size\":128,\"time_cond_proj_dim\":null,"      \
  "\"time_embedding_act_fn\":null,\"time_embedding_dim\":null,"                                   \
  "\"time_embedding_type\":\"positional\",\"timestep_post_act\":null,"                            \
  "\"transformer_layers_per_block\":" layers ",\"up_block_types\":" up ","                        \
  "\"upcast_attention\":null,\"use_linear_projection\":true}"

static const char CFG_SDXL_UNET[] = CFG_XL_UNET(
    "[5,10,20]", "[320,640,1280]", 2048,
    "[\"DownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\"]", 2816, "[1,2,10]",
    "[\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"UpBlock2D\"]");
static const char CFG_REFINER_UNET[] = CFG_XL_UNET(
    "[6,12,24,24]", "[384,768,1536,1536]", 1280,
    "[\"DownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"]", 2560,
    "4", "[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"UpBlock2D\"]");

static const char CFG_SDXL_VAE[] =
    "{\"_class_name\":\"AutoencoderKL\",\"_diffusers_version\":\"0.20.0.dev0\",\"act_fn\":\"silu\","
    "\"block_out_channels\":[128,256,512,512],\"down_block_types\":" CFG_DOWN4_ENC ","
    "\"force_upcast\":true,\"in_channels\":3,\"latent_channels\":4,\"layers_per_block\":2,"
    "\"norm_num_groups\":32,\"out_channels\":3,\"sample_size\":1024,\"scaling_factor\":0.13025,"
    "\"up_block_types\":" CFG_UP4_DEC "}";

static const char CFG_SD3_INDEX[] =
    "{\"_class_name\":\"StableDiffusion3Pipeline\",\"_diffusers_version\":\"0.31.0.dev0\","
    "\"scheduler\":[\"diffusers\",\"FlowMatchEulerDiscreteScheduler\"],"
    "\"text_encoder\":[\"transformers\",\"CLIPTextModelWithProjection\"],"
    "\"text_encoder_2\":[\"transformers\",\"CLIPTextModelWithProjection\"],"
    "\"text_encoder_3\":[\"transformers\",\"T5EncoderModel\"],"
    "\"tokenizer\":[\"transformers\",\"CLIPTokenizer\"],\"tokenizer_2\":[\"transformers\",\"CLIPTokenizer\"],"
    "\"tokenizer_3\":[\"transformers\",\"T5TokenizerFast\"],"
    "\"transformer\":[\"diffusers\",\"SD3Transformer2DModel\"],\"vae\":[\"diffusers\",\"AutoencoderKL\"]}";

static const char CFG_SD3_SCHEDULER[] =
    "{\"_class_name\":\"FlowMatchEulerDiscreteScheduler\",\"_diffusers_version\":\"0.29.0.dev0\","
    "\"num_train_timesteps\":1000,\"shift\":3.0}";

#define CFG_SD3_TRANSFORMER(cap, dual, heads, layers, posmax)                                 \
  "{\"_class_name\":\"SD3Transformer2DModel\",\"_diffusers_version\":\"0.31.0.dev0\","           \
  "\"attention_head_dim\":64,\"caption_projection_dim\":" #cap "," dual "\"in_channels\":16,"    \
  "\"joint_attention_dim\":4096,\"num_attention_heads\":" #heads ",\"num_layers\":" #layers ","  \
  "\"out_channels\":16,\"patch_size\":2,\"pooled_projection_dim\":2048,"                         \
  "\"pos_embed_max_size\":" #posmax ",\"qk_norm\":\"rms_norm\",\"sample_size\":128}"

static const char CFG_SD35_MEDIUM_TRANSFORMER[] = CFG_SD3_TRANSFORMER(
    1536, "\"dual_attention_layers\":[0,1,2,3,4,5,6,7,8,9,10,11,12],", 24, 24, 384);
static const char CFG_SD35_LARGE_TRANSFORMER[] = CFG_SD3_TRANSFORMER(2432, "", 38, 38, 192);

static const char CFG_SD3_VAE[] =
    "{\"_class_name\":\"AutoencoderKL\",\"_diffusers_version\":\"0.31.0.dev0\",\"act_fn\":\"silu\","
    "\"block_out_channels\":[128,256,512,512],\"down_block_types\":" CFG_DOWN4_ENC ","
    "\"force_upcast\":true,\"in_channels\":3,\"latent_channels\":16,\"latents_mean\":null,"
    "\"latents_std\":null,\"layers_per_block\":2,\"mid_block_add_attention\":true,"
    "\"norm_num_groups\":32,\"out_channels\":3,\"sample_size\":1024,\"scaling_factor\":1.5305,"
    "\"shift_factor\":0.0609,\"up_block_types\":" CFG_UP4_DEC ",\"use_post_quant_conv\":false,"
    "\"use_quant_conv\":false}";

static const char CFG_T5_XXL[] =
    "{\"architectures\":[\"T5EncoderModel\"],\"classifier_dropout\":0.0,\"d_ff\":10240,\"d_kv\":64,"
    "\"d_model\":4096,\"decoder_start_token_id\":0,\"dense_act_fn\":\"gelu_new\","
    "\"dropout_rate\":0.1,\"eos_token_id\":1,\"feed_forward_proj\":\"gated-gelu\","
    "\"initializer_factor\":1.0,\"is_encoder_decoder\":true,\"is_gated_act\":true,"
    "\"layer_norm_epsilon\":1e-06,\"model_type\":\"t5\",\"num_decoder_layers\":24,\"num_heads\":64,"
    "\"num_layers\":24,\"output_past\":true,\"pad_token_id\":0,"
    "\"relative_attention_max_distance\":128,\"relative_attention_num_buckets\":32,"
    "\"tie_word_embeddings\":false,\"torch_dtype\":\"float16\",\"use_cache\":true,"
    "\"vocab_size\":32128}";

/* madebyollin/taesd, taesdxl, taesd3 (AutoencoderTiny): 64 channels, the
 * release block counts; latent channels 4 / 16. */
#define CFG_TAESD(latent, shift)                                                                  \
  "{\"_class_name\":\"AutoencoderTiny\",\"_diffusers_version\":\"0.20.0.dev0\","                  \
  "\"act_fn\":\"relu\",\"decoder_block_out_channels\":[64,64,64,64],"                              \
  "\"encoder_block_out_channels\":[64,64,64,64],\"force_upcast\":false,\"in_channels\":3,"          \
  "\"latent_channels\":" #latent ",\"latent_magnitude\":3,\"latent_shift\":0.5,"                   \
  "\"num_decoder_blocks\":[3,3,3,1],\"num_encoder_blocks\":[1,3,3,3],\"out_channels\":3,"          \
  "\"scaling_factor\":1.0" shift ",\"upsampling_scaling_factor\":2}"

static const char CFG_TAESD_4[] = CFG_TAESD(4, "");
static const char CFG_TAESD_16[] = CFG_TAESD(16, ",\"shift_factor\":0.0");

#endif
