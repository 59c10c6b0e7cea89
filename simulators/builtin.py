"""The built-in hardware classes (``cortex-m0plus``, ``cortex-m4f``, ``linux-gateway``)
as profile YAML; :func:`simulators.profiles.builtin_profiles` parses it."""

BUILTIN_PROFILES_YAML = """
cortex-m0plus:
  manufacturer: Microchip Technology
  model: SAMD21G18A sensor node
  firmware_version: 1.4.2
  hardware_version: rev-b
  device_type: sensor
  lwm2m_version: "1.0"
  queue_mode: true
  lifetime: 600
  ram: 32768
  flash: 262144
  flash_free: 131072
  battery_level: 92
  power_sources:
    - {type: battery, voltage_mv: 3000, current_ma: 2}
  sensors: [temperature]
  sensor_interval: 10
  download_block_size: 512
  tinyml:
    runtime: tflite-micro
    runtime_version: "2025-01-15"
    operators: [FULLY_CONNECTED, SOFTMAX, RESHAPE, QUANTIZE, DEQUANTIZE, LOGISTIC]
    model_ram: 8192
    model_storage: 131072
    arena_budget: 16384
    cpu_core: cortex-m0plus
    cpu_clock: 48000000
    accelerators: []
    model_formats: [tflite]
    inference_period: 30           # seconds between inferences once a model is active

cortex-m4f:
  manufacturer: STMicroelectronics
  model: STM32F4 sensor node
  firmware_version: 2.1.0
  hardware_version: rev-c
  device_type: sensor
  lwm2m_version: "1.1"
  queue_mode: false
  lifetime: 300
  ram: 262144
  flash: 1048576
  flash_free: 524288
  power_sources:
    - {type: usb, voltage_mv: 5000, current_ma: 85}
  sensors: [temperature, humidity, accelerometer]
  sensor_interval: 5
  delivery: push                 # /5/0/9 = 1: the server pushes packages (Block1)
  tinyml:
    runtime: tflite-micro
    runtime_version: "2025-01-15"
    operators: [FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, AVERAGE_POOL_2D, MAX_POOL_2D,
                SOFTMAX, RESHAPE, QUANTIZE, DEQUANTIZE, LOGISTIC, ADD, MUL, MEAN, PAD,
                TANH, RELU, CONCATENATION, STRIDED_SLICE]
    model_ram: 32768
    model_storage: 524288
    arena_budget: 131072
    cpu_core: cortex-m4f
    cpu_clock: 168000000
    accelerators: [cmsis-nn]
    model_formats: [tflite]
    inference_period: 10           # seconds between inferences once a model is active

linux-gateway:
  manufacturer: Raspberry Pi Ltd
  model: Raspberry Pi 4 Model B gateway
  firmware_version: 6.6.31
  hardware_version: "1.5"
  device_type: gateway
  lwm2m_version: "1.2"
  queue_mode: false
  lifetime: 3600
  ram: 4294967296
  flash: 34359738368
  flash_free: 17179869184
  power_sources:
    - {type: dc, voltage_mv: 5100, current_ma: 1200}
  sensors: [temperature, generic]
  sensor_interval: 2
  tinyml:
    runtime: litert
    runtime_version: 1.2.0
    operators: [FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D, AVERAGE_POOL_2D, MAX_POOL_2D,
                SOFTMAX, RESHAPE, QUANTIZE, DEQUANTIZE, LOGISTIC, ADD, SUB, MUL, DIV, MEAN,
                PAD, TANH, RELU, RELU6, CONCATENATION, STRIDED_SLICE, TRANSPOSE, GATHER,
                BATCH_MATMUL, UNIDIRECTIONAL_SEQUENCE_LSTM, SQUEEZE, EXPAND_DIMS, LEAKY_RELU]
    model_ram: 536870912
    model_storage: 4294967296
    arena_budget: 268435456
    cpu_core: aarch64
    cpu_clock: 1500000000
    accelerators: [xnnpack]
    model_formats: [tflite]
    inference_period: 5           # seconds between inferences once a model is active
"""
"""The built-in hardware classes; ``config/fleet.yaml`` spells the same ones out."""
